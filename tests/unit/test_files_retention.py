"""Retention over S3 (SeaweedFS): artifacts expire by S3's LastModified (they never did before: the pass read
only a local mtime), and a shared files store's temp files, outputs and dead receipts go by theirs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from comfymesh.artifacts import ArtifactStore, encode_value
from comfymesh.files import open_files
from comfymesh.jobs import JobStore
from comfymesh.orchestrator.retention import RetentionPolicy, collect
from comfymesh.outputs import OutputIdentity, write_pngs
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)

DAY = 86400.0


def _stored(artifacts: ArtifactStore, uri: str) -> bool:
    return bool(artifacts.fs.exists(uri.split("://", 1)[1]))


def test_s3_artifacts_expire_by_last_modified(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore(seaweedfs.new_url(), options=seaweedfs.options())
    image = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    kept = encode_value("IMAGE", image, artifacts)
    store.cache_put("kept", "ImageInvert", [json_format.MessageToDict(kept, preserving_proto_field_name=True)], None)
    orphan = encode_value("IMAGE", image + 1, artifacts)
    policy = RetentionPolicy(cache_max_age_s=0, artifact_grace_s=3600)
    assert collect(store, artifacts, tmp_path, policy).artifacts_removed == 0  # within the grace period
    later = time.time() + 2 * 3600
    report = collect(store, artifacts, tmp_path, policy, now=later)
    assert report.artifacts_removed == 1 and report.bytes_freed == orphan.tensor.nbytes
    assert _stored(artifacts, kept.tensor.uri) and not _stored(artifacts, orphan.tensor.uri)
    # another host's store sees the delete at once (no listing cache)
    other = ArtifactStore(artifacts.url, options=seaweedfs.options())
    assert not _stored(other, orphan.tensor.uri)


def test_shared_temp_outputs_and_receipts_expire(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    files = open_files(seaweedfs.new_url(), seaweedfs.options())
    frame = np.zeros((1, 4, 4, 3), np.float32)
    saved = write_pngs(frame, tmp_path, "kept", files=files, identity=OutputIdentity("job", "9"))
    write_pngs(frame, tmp_path, "ComfyUI_temp_abcde", folder_type="temp", files=files)
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore((tmp_path / "artifacts").as_uri())
    policy = RetentionPolicy(temp_max_age_s=DAY, output_max_age_s=0)
    assert collect(store, artifacts, tmp_path, policy, files=files).files_removed == []
    report = collect(store, artifacts, tmp_path, policy, now=time.time() + 9 * DAY, files=files)
    assert report.files_removed == ["temp/ComfyUI_temp_abcde_00001_.png"]  # outputs are kept (0: forever)
    assert report.receipt_folders_removed == 1
    assert files.exists(f"output/{saved[0].filename}") and files.entries(".outputs") == []
    aged = RetentionPolicy(output_max_age_s=DAY)
    assert collect(store, artifacts, tmp_path, aged, now=time.time() + 2 * DAY, files=files).files_removed \
        == [f"output/{saved[0].filename}"]

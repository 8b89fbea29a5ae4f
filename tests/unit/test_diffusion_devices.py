"""`comfymesh up`'s device set: one diffusion replica per device, each on its own port with its device pinned."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from comfymesh.cli.diffusion_devices import device_set, plan_replicas
from comfymesh.config import Settings


def test_the_device_set_defaults_to_every_visible_gpu_else_one_cpu() -> None:
    assert device_set("", 0, {}) == ["cpu"]
    assert device_set("", 2, {}) == ["cuda:0", "cuda:1"]
    # the user's CUDA_VISIBLE_DEVICES narrows what nvidia-smi lists
    assert device_set("", 4, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["cuda:0", "cuda:1"]
    assert device_set(" cpu, cpu ", 8, {}) == ["cpu", "cpu"]
    assert device_set("cuda", 8, {}) == ["cuda:0"]


def test_each_replica_gets_its_own_port_and_pinned_device() -> None:
    replicas = plan_replicas(["cuda:0", "cuda:1"], ["127.0.0.1:50071"], {})
    assert [(r.name, r.listen) for r in replicas] == [("diffusion-0", "127.0.0.1:50071"),
                                                     ("diffusion-1", "127.0.0.1:50072")]
    # each child sees only its card, as cuda:0
    assert [r.env for r in replicas] == [{"CUDA_VISIBLE_DEVICES": "0", "COMFYMESH_DEVICE": "cuda:0"},
                                         {"CUDA_VISIBLE_DEVICES": "1", "COMFYMESH_DEVICE": "cuda:0"}]
    assert replicas[1].describe() == "diffusion-1 listens on 127.0.0.1:50072, device cuda:1, CUDA_VISIBLE_DEVICES=1"
    # configured addresses are used in order; a user's CUDA_VISIBLE_DEVICES maps the indexes to its ids
    replicas = plan_replicas(["cuda:0", "cuda:1"], ["10.0.0.1:7000", "10.0.0.1:7100"], {"CUDA_VISIBLE_DEVICES": "5,7"})
    assert [(r.listen, r.env["CUDA_VISIBLE_DEVICES"]) for r in replicas] == [("10.0.0.1:7000", "5"),
                                                                            ("10.0.0.1:7100", "7")]
    with pytest.raises(ValueError, match="cuda:2 is not among CUDA_VISIBLE_DEVICES=5,7"):
        plan_replicas(["cuda:2"], ["127.0.0.1:1"], {"CUDA_VISIBLE_DEVICES": "5,7"})
    # two simulated devices on the CPU; one device keeps the plain name
    assert [(r.name, r.env) for r in plan_replicas(["cpu", "cpu"], ["127.0.0.1:50071"], {})] == [
        ("diffusion-0", {"COMFYMESH_DEVICE": "cpu"}), ("diffusion-1", {"COMFYMESH_DEVICE": "cpu"})]
    assert plan_replicas(["cpu"], ["127.0.0.1:50071"], {})[0].name == "diffusion"


def test_a_malformed_device_list_is_refused_at_start_up(configure: Callable[..., Settings]) -> None:
    with pytest.raises(SystemExit, match="COMFYMESH_DIFFUSION_DEVICES"):
        configure(diffusion_devices="gpu0")
    assert configure(diffusion_devices="cuda:0, cuda:1").diffusion_devices == "cuda:0, cuda:1"


def test_the_replica_on_the_split_sets_first_device_sees_the_others() -> None:
    replicas = plan_replicas(["cuda:0", "cuda:2"], ["127.0.0.1:50071"], {"CUDA_VISIBLE_DEVICES": "4,5,6,7"},
                             split_devices="cuda:0, cuda:1")
    # the first replica sees its card and the split's other one, renumbered from its own cuda:0
    assert replicas[0].env == {"CUDA_VISIBLE_DEVICES": "4,5", "COMFYMESH_DEVICE": "cuda:0",
                               "COMFYMESH_DIFFUSION_SPLIT_DEVICES": "cuda:0,cuda:1"}
    # the other splits nothing, whatever the parent's environment says
    assert replicas[1].env == {"CUDA_VISIBLE_DEVICES": "6", "COMFYMESH_DEVICE": "cuda:0",
                               "COMFYMESH_DIFFUSION_SPLIT_DEVICES": ""}
    with pytest.raises(ValueError, match="starts with cuda:1, which runs no diffusion replica"):
        plan_replicas(["cuda:0"], ["127.0.0.1:1"], {}, split_devices="cuda:1,cuda:0")
    with pytest.raises(ValueError, match="COMFYMESH_DIFFUSION_SPLIT_DEVICES: cuda:3 is not among"):
        plan_replicas(["cuda:0"], ["127.0.0.1:1"], {"CUDA_VISIBLE_DEVICES": "0,1"}, split_devices="cuda:0,cuda:3")
    # simulated devices: the CPU replica gets the set as written
    cpu = plan_replicas(["cpu", "cpu"], ["127.0.0.1:50071"], {}, split_devices="cpu,cpu,cpu")
    assert [r.env.get("COMFYMESH_DIFFUSION_SPLIT_DEVICES") for r in cpu] == ["cpu,cpu,cpu", ""]
    # no split set: nothing added
    assert "COMFYMESH_DIFFUSION_SPLIT_DEVICES" not in plan_replicas(["cuda:0"], ["127.0.0.1:1"], {})[0].env

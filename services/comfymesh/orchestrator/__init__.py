"""The orchestrator: validates, persists, plans and dispatches jobs; streams their events."""

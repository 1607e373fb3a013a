"""Observability: Prometheus metrics, the admin API (/metrics, /healthz, /status, /reload), the
status document and logging. Reads the switch through hepfast.observe.view.SwitchView."""

"""Protocol-faithful local stand-ins for external services (ComfyUI, OpenAI, Replicate, RunPod).

They ship in the package because tests, systemd-nspawn and NixOS VM tests all run them as real
processes: `python -m appliance.standins.<service> --port P`. Each prints one line
`READY <url>` on stdout once it listens, so callers can wait for it.
"""

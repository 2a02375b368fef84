# From xflops/flame v0.6.0, docs/sdk/python.md, section "Register Applications"
# (https://github.com/xflops/flame, Apache License 2.0, Copyright 2025 The Flame Authors).
# Changed: nothing below this header (the section's code blocks, in order). The endpoint is the only
# difference: the test points FLAME_ENDPOINT (and ~/.flame/flame.yaml) at a flo-server.
import flamepy

flamepy.register_application(
    "echo",
    {
        "shim": flamepy.Shim.HOST,
        "command": "python /opt/echo/service.py",
        "description": "Echo service",
    },
)

session = flamepy.create_session("echo")

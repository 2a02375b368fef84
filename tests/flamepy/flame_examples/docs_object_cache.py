# From xflops/flame v0.6.0, docs/sdk/python.md, section "Use Object Cache"
# (https://github.com/xflops/flame, Apache License 2.0, Copyright 2025 The Flame Authors).
# Changed: nothing below this header (the section's code blocks, in order). The endpoint is the only
# difference: the test points FLAME_ENDPOINT (and ~/.flame/flame.yaml) at a flo-server.
import flamepy

ref = flamepy.put_object("my-app/shared", {"temperature": 0.8})
value = flamepy.get_object(ref)

next_ref = flamepy.update_object(ref, {"temperature": 0.7})
next_value = flamepy.get_object(next_ref)

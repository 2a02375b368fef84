# From xflops/flame v0.6.0, docs/sdk/python.md, section "Create Sessions And Run Tasks"
# (https://github.com/xflops/flame, Apache License 2.0, Copyright 2025 The Flame Authors).
# Changed: nothing below this header (the section's code blocks, in order). The endpoint is the only
# difference: the test points FLAME_ENDPOINT (and ~/.flame/flame.yaml) at a flo-server.
from concurrent.futures import wait

import flamepy

session = flamepy.create_session(
    "flmping",
    min_instances=1,
    resreq=flamepy.ResourceRequirement.from_string("cpu=1,mem=1g"),
)

output = session.invoke(b"hello")
print(output)

futures = [session.run(f"task {idx}".encode()) for idx in range(10)]
wait(futures)
outputs = [future.result() for future in futures]

session.close()

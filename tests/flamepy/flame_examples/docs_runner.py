# From xflops/flame v0.6.0, docs/sdk/python.md, section "Use Runner"
# (https://github.com/xflops/flame, Apache License 2.0, Copyright 2025 The Flame Authors).
# Changed: nothing below this header (the section's code blocks, in order). The endpoint is the only
# difference: the test points FLAME_ENDPOINT (and ~/.flame/flame.yaml) at a flo-server.
from flamepy.runner import Runner


def square(value: int) -> int:
    return value * value


with Runner("square-app") as runner:
    svc = runner.service(square, warmup=2)
    futures = [svc(idx) for idx in range(8)]
    print(runner.get(futures))

from flamepy.runner import Runner

class Counter:
    def __init__(self, initial: int = 0):
        self._count = initial

    def add(self, value: int) -> int:
        self._count += value
        return self._count

    def get(self) -> int:
        return self._count

with Runner("counter-app") as runner:
    counter = runner.service(Counter(10), warmup=1)
    counter.add(1).wait()
    counter.add(3).wait()
    print(counter.get().get())

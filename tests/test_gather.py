"""csmlab.batching.gather: rounds wait for conversations that will come, and only for those."""
import threading
import time

from csmlab.batching.gather import Gather, GatherGroup

WINDOW_MS = 300


def _pipeline(members: int):
    """Three gathers in one group, as a duplex step runs them: encode (entry), brain, decode (exit).
    Each records the slots of every round it runs."""
    group = GatherGroup(lambda: members)
    rounds = {"entry": [], "middle": [], "exit": []}

    def stage(name):
        def run(batch):
            rounds[name].append(sorted(batch))
            return {slot: item + 1 for slot, item in batch.items()}
        return Gather(run, WINDOW_MS, group, name)

    return {name: stage(name) for name in rounds}, rounds


def _step(gathers, slot, value, pause_s: float = 0.0) -> int:
    value = gathers["entry"].submit(slot, value)
    time.sleep(pause_s)  # computing between two gathers (a brain's own work)
    return gathers["exit"].submit(slot, gathers["middle"].submit(slot, value))


def _together(gathers, pauses: dict) -> dict:
    results = {}
    threads = [threading.Thread(target=lambda s=s, p=p: results.__setitem__(s, _step(gathers, s, 10 * s, p)))
               for s, p in pauses.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_past_the_entry_a_round_does_not_wait_for_a_conversation_between_steps():
    gathers, rounds = _pipeline(members=2)
    assert _together(gathers, {0: 0.0, 1: 0.0}) == {0: 3, 1: 13}  # a first step, together
    start = time.perf_counter()
    assert _step(gathers, 0, 100) == 103  # slot 1 is between steps (no frame yet)
    took_ms = 1000 * (time.perf_counter() - start)
    assert rounds["entry"][-1] == rounds["middle"][-1] == rounds["exit"][-1] == [0]
    # the entry waited its window for slot 1's frame; the brain and decode rounds did not wait again
    assert 0.9 * WINDOW_MS <= took_ms < 1.8 * WINDOW_MS


def test_a_round_still_waits_for_a_conversation_inside_its_step():
    gathers, rounds = _pipeline(members=2)
    _together(gathers, {0: 0.0, 1: 0.0})
    assert _together(gathers, {0: 0.0, 1: 0.1}) == {0: 3, 1: 13}  # slot 1 computes 100 ms before its brain round
    assert rounds["middle"][-1] == rounds["exit"][-1] == [0, 1]  # slot 0's rounds waited for it: one forward each

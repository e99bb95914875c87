import subprocess
import sys
import textwrap

import pytest
import torch

from fewcells.training.memory import unfilled_new_memory

# Minor page faults of 20 paper-CNN training steps (channels-last, augmented, 257 px) in a
# fresh process, after 5 warm-up steps; argv[1] == "keep" calls keep_freed_memory() first.
STEP_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from fewcells.training.augment import BatchAugment
    from fewcells.training.models import PaperCNN
    from fewcells.training.memory import keep_freed_memory
    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.manual_seed(0)
    model = PaperCNN(2).to(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9)
    images = torch.randint(0, 256, (5, 257, 257, 3), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 0, 1, 1])
    def step():
        x = BatchAugment()(images.permute(0, 3, 1, 2))
        loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _step_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


def test_unfilled_new_memory_is_restored_afterwards():
    assert torch.utils.deterministic.fill_uninitialized_memory
    with pytest.raises(RuntimeError), unfilled_new_memory():
        assert not torch.utils.deterministic.fill_uninitialized_memory
        raise RuntimeError("a failed training")
    assert torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_training_steps():
    default, kept = _step_faults("default"), _step_faults("keep")
    assert default > 2000  # about 1,000 per step: activations unmapped and faulted in again
    assert kept < default / 4


# Resident MB that release_freed_memory() hands back after 40 freed 8 MB tensors (glibc's heap,
# kept by keep_freed_memory).
RELEASE = textwrap.dedent(
    """
    import torch
    from fewcells.training.memory import keep_freed_memory, release_freed_memory
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    assert keep_freed_memory()
    blocks = [torch.ones(2 << 20) for _ in range(40)]
    del blocks
    kept = resident_mb()
    assert release_freed_memory()
    print(kept - resident_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_hands_kept_memory_back():
    done = subprocess.run(
        [sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True
    )
    assert float(done.stdout) > 200

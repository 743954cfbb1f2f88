"""One driver per results directory (the lease, results/lease.py, around a campaign's block),
stopped cleanly: SIGTERM as Ctrl-C (interrupts.py), and a lease lost as an interruption."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import pyarrow.fs as pafs

from lem_ray.execution.driver.dispatch import CampaignInterrupted
from lem_ray.execution.driver.interrupts import interrupt_main, sigterm_as_interrupt
from lem_ray.results.compile_cache import FOLDER as COMPILE_CACHE_FOLDER
from lem_ray.results.lease import Lease, LeaseLost, only_lease_there
from lem_ray.results.store import exists, resolve


def move_aside(results_dir: str, lease: Lease) -> str | None:
    """`--fresh`: rename the old results to `<dir>.old-<UTC time>`, the lease taken in the new
    directory; None if there were none (a directory that holds only our lease is new). The
    compile cache inside comes back into the new directory: its entries are keyed by what
    decides the compiled code, not by the results, so starting over keeps them."""
    if not exists(results_dir) or only_lease_there(results_dir):
        return None
    fs, base = resolve(results_dir)
    target = f"{base}.old-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    fs.move(base, target)
    lease.move_with_directory(target)
    cache = f"{target}/{COMPILE_CACHE_FOLDER}"
    if fs.get_file_info(cache).type == pafs.FileType.Directory:
        fs.move(cache, f"{base}/{COMPILE_CACHE_FOLDER}")
    return target


@contextmanager
def sole_driver(results_dir: str, fresh: bool) -> Iterator[str | None]:
    """This driver alone on results_dir for the block, and SIGTERM stopping it as Ctrl-C does.

    The lease is taken first (LeaseHeld, one line naming the holder, when another driver has
    it) and renewed in a thread; with `fresh` the old results are moved aside under it (the
    block gets where they went). A lease lost meanwhile interrupts the campaign as Ctrl-C
    would, and the block ends in LeaseLost.
    """
    lease = Lease(results_dir)
    lease.take()
    try:
        with sigterm_as_interrupt():
            moved = move_aside(results_dir, lease) if fresh else None
            lease.keep_renewed(lambda reason: interrupt_main())
            try:
                yield moved
            except (KeyboardInterrupt, CampaignInterrupted):
                if lease.lost:
                    raise LeaseLost(lease.lost) from None
                raise
            if lease.lost:
                raise LeaseLost(lease.lost)
    finally:
        lease.release()

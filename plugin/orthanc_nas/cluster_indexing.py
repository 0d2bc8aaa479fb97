"""One indexing run read by every node of a cluster (SPEC "Several Orthanc nodes").

The node that starts the run (the coordinator) records it (`runs`), then turns the NAS's folders into
work items of the `work_items` table: the root's own files, and each folder at the top of the run's
folder with everything under it. While there are fewer than `SPLIT_INTO` items, the folders of the
deepest level are split further, each into its own files and its subfolders (whole), so a NAS that keeps
everything in one or two folders (`archive/…`) still spreads over the nodes; the items always partition
the tree (each file is listed by exactly one item). Every node, the coordinator included, takes items one at a time
(`SELECT … FOR UPDATE SKIP LOCKED`: two nodes never take the same one), walks and reads them through
the usual pipeline (`indexer._Run`: retries, the NAS-gone verdict, the throttle) and writes with the
run's id, so the files it sees count as seen by the run wherever they were read.

An item is taken with a lease, renewed while its node lives; it is `done` only once every file the
walk of it listed is written. A node that dies (kill -9) leaves its items `taken`: when their lease
expires, another node takes them and walks them again; what the dead node wrote is kept (unchanged
files are only marked seen), so each file ends with one row. Each node publishes, with its counters,
those of the items it holds and has not finished (`ClusterRunPart.part`): the status leaves out a node's
counts of items another node took over (`cluster.settled`), so each file also counts once. The coordinator ends the run when every
item is done; files no longer on the NAS are removed only when every item was walked without a
listing error (the rule of one node, held for the cluster as a whole).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager

from . import store
from .catalog import transaction
from .catalog_writer import CatalogWriter
from .errors import NasError
from .indexer import Indexer, _Run
from .sources.scope import WalkScope
from .sources.walk import WalkError
from .store_dialects import dialect

log = logging.getLogger("orthanc_nas")

LEASE = 15.0  # seconds an item stays with a node that stopped renewing it
RENEW = 3.0  # seconds between two renewals of a node's leases
POLL = 1.0  # seconds between two looks for work, on a node that has none
AHEAD = 64  # files of walked items still to read below which a node takes its next item
SPLIT_INTO = 32  # items a run is split into at least, when its folders allow
SPLIT_LISTINGS = 256  # folders listed at most to split a run (the coordinator lists them before reading)


class WorkItems:
    """The work items of one run, seen from one node (its own connection: one thread uses it)."""

    def __init__(self, engine: store.Engine, run_id: int, node: str, lease: float = LEASE):
        self.conn = engine.connect("index")
        self.run_id, self.node, self.lease = run_id, node, lease

    def seed(self, items: list[tuple[str, bool]]) -> None:
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO work_items(run_id, folder, recursive, state, lease_until) VALUES (?,?,?,'todo',0) "
                "ON CONFLICT(run_id, folder, recursive) DO NOTHING",
                [(self.run_id, folder, int(recursive)) for folder, recursive in items])

    def take(self) -> tuple[str, bool] | None:
        """An item no node holds (or whose lease expired), now this node's; None when there is none."""
        now = time.time()
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT folder, recursive FROM work_items WHERE run_id=? AND (state='todo' OR "
                "(state='taken' AND lease_until<?)) ORDER BY state DESC, folder LIMIT 1"
                f"{dialect(self.conn).skip_locked}", (self.run_id, now)).fetchone()
            if row is None:
                return None
            self.conn.execute("UPDATE work_items SET state='taken', node=?, lease_until=? "
                              "WHERE run_id=? AND folder=? AND recursive=?",
                              (self.node, now + self.lease, self.run_id, row[0], row[1]))
        return row[0], bool(row[1])

    def renew(self) -> None:
        self.conn.execute("UPDATE work_items SET lease_until=? WHERE run_id=? AND node=? AND state='taken'",
                          (time.time() + self.lease, self.run_id, self.node))

    def done(self, item: tuple[str, bool], files: int, walk_errors: int) -> bool:
        """Mark `item` done; False when it is no longer this node's (its lease ran out, another took it)."""
        return self.conn.execute("UPDATE work_items SET state='done', files=?, walk_errors=? "
                          "WHERE run_id=? AND folder=? AND recursive=? AND node=?",
                          (files, walk_errors, self.run_id, item[0], int(item[1]), self.node)).rowcount > 0

    def totals(self) -> tuple[int, int, int]:
        """(items not done, files listed, listing errors) of the whole run."""
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE state<>'done'), coalesce(sum(files), 0), coalesce(sum(walk_errors), 0) "
            "FROM work_items WHERE run_id=?", (self.run_id,)).fetchone()
        return row[0], row[1], row[2]

    def close(self) -> None:
        self.conn.close()


class ClusterRunPart(_Run):
    """This node's part of a cluster run; the coordinator's part also begins and ends the run."""

    def __init__(self, indexer: Indexer, full: bool, scope: WalkScope, trigger: str, cluster, *,
                 run_id: int | None = None):
        super().__init__(indexer, full, scope, trigger)
        self.cluster = cluster
        self.coordinator = run_id is None
        self.run_id = run_id
        self.items: WorkItems | None = None
        self.split = scope.folder == ""  # a run of one folder is one item
        self.outstanding: dict[tuple[str, bool], int] = {}  # files dispatched to read, not written yet
        self.walking: tuple[str, bool] | None = None  # the item whose chunks the listing yields now
        self.item_of: dict[str, list] = {}  # the item of each file dispatched, not written yet (a file
        # dispatched again, its item taken again after its lease ran out, is there twice)
        self.listed: dict[tuple[str, bool], tuple[int, int]] = {}  # walked items: (files, listing errors)
        # This node's counters of the items it holds, not done yet, and of items it lost to another node:
        # published with its part, so the sum over the nodes counts each file once (`cluster.settled`)
        self.progress: dict[tuple[str, bool], Counter] = {}
        self.lost: Counter = Counter()
        self._item_of_batch: dict[str, tuple[str, bool]] = {}  # the files being written, while they are
        self._share: Callable[[dict], None] | None = None  # writes this node's part (`publish_part`)
        self._shareable = True  # the counters and `progress` agree (not in the middle of a count)
        self._unshared: dict | None = None  # a status write that came while they did not

    # -- beginning and end ------------------------------------------------------
    def execute(self) -> None:
        status = self.status
        source = self.ix.source_factory()
        writer = CatalogWriter(self.ix.catalog)
        if self.coordinator:
            writer.begin_run(self.trigger, self.scope.folder)
            self.cluster.set_run(writer.run_id, self.full, self.scope.folder)
        else:
            writer.run_id = self.run_id
        self.items = WorkItems(self.ix.catalog.engine, writer.run_id, self.cluster.node)
        renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(renewing,), name="nas-cluster-leases", daemon=True)
        try:
            if self.coordinator:
                self.items.seed(self._split(source))
            renewer.start()
            status.update(series_count=writer.series_count())
            outcome = self._pipeline(source, writer)
            status.update(series_count=writer.series_count())
            if self.coordinator:
                writer.finish_run(outcome, self._counts())
            status.set_phase(outcome)
        except BaseException:
            if self.coordinator:
                try:
                    writer.finish_run("failed", self._counts())
                except store.DatabaseUnavailable:
                    pass
            raise
        finally:
            renewing.set()
            if renewer.is_alive():
                renewer.join()
            self.items.close()
            writer.close()

    def _renew(self, done: threading.Event) -> None:
        items = WorkItems(self.ix.catalog.engine, self.items.run_id, self.cluster.node)
        try:
            while not done.wait(RENEW):
                try:
                    items.renew()
                except store.DatabaseUnavailable as exc:
                    log.warning("NAS cluster: leases not renewed: %s", exc.message)
        finally:
            items.close()

    def _split(self, source) -> list[tuple[str, bool]]:
        """The run's items: `(folder, False)` its own files, `(folder, True)` everything under it. The root's
        own files and its folders whole; then, while fewer than `SPLIT_INTO`, each folder of the deepest
        level becomes its own files and its subfolders whole. A folder that cannot be listed here stays
        whole (its walk meets the error and counts it)."""
        if not self.split:
            return [(self.scope.folder, True)]
        items, level, listings = [("", False)], self._subfolders(source, ""), 1
        while level and len(items) + len(level) < SPLIT_INTO and listings + len(level) <= SPLIT_LISTINGS:
            deeper = []
            for folder in level:
                listings += 1
                try:
                    below = self._subfolders(source, folder)
                except NasError:
                    items.append((folder, True))
                    continue
                items.append((folder, False))
                deeper += below
            level = deeper
        return items + [(folder, True) for folder in level]

    def _subfolders(self, source, folder: str) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return [prefix + name[:-1] for name in source.list_root(10_000_000, folder)
                if name.endswith("/") and self.scope.enters(name[:-1])]

    def _item_scope(self, item: tuple[str, bool]) -> WalkScope:
        folder, recursive = item
        excluded = self.scope.excluded_folders if recursive else ("*",)  # the root item: its own files only
        return WalkScope(folder, excluded, self.scope.skipped_extensions)

    # -- the listing: items one after the other ---------------------------------
    def _listing(self, source):
        return self._items_listing(source)

    def _items_listing(self, source):
        while not self.stop.is_set():
            if not self.coordinator and not self.cluster.still_running(self.items.run_id):
                self.cancel.set()  # stopped from a node, or the coordinator is gone: what was written stays
                return
            if sum(self.outstanding.get(i, 0) for i in self.listed) > AHEAD:
                yield []  # this node's share is still being read: leave the other items to the others
                time.sleep(0.1)
                continue
            item = self.items.take()
            if item is None:
                if self.coordinator and self.items.totals()[0]:
                    yield []  # items still with other nodes (or leases to expire): the pipeline ticks
                    time.sleep(POLL)
                    continue
                return
            self.outstanding.setdefault(item, 0)
            self.walking = item
            files = errors = 0
            walk = source.walk(self.stop, self._item_scope(item), chunks=True)
            try:
                for chunk in walk:
                    errors += sum(isinstance(e, WalkError) for e in chunk)
                    files += sum(not isinstance(e, WalkError) for e in chunk)
                    yield chunk
            finally:
                walk.close()
            if self.stop.is_set():
                return  # not walked to the end: the item stays this node's until its lease expires
            self.listed[item] = (files, errors)
            self._maybe_done(item)

    def _maybe_done(self, item: tuple[str, bool]) -> None:
        if item in self.listed and not self.outstanding.get(item):
            files, errors = self.listed.pop(item)
            self.outstanding.pop(item, None)
            counts = self.progress.pop(item, Counter())
            if not self.items.done(item, files, errors):
                self.lost += counts  # read again by the node that holds it now: counted there
            if self._share is not None:
                self._share(self.status.snapshot())

    # -- this node's part, as the other nodes sum it -----------------------------
    def share_with(self, publish: Callable[[dict], None]) -> Callable[[dict], None]:
        """Publish this node's part through `publish` (`ClusterRun.publish_part`); the answer is the
        status's `on_write`: a write that comes in the middle of a count waits for its end."""
        def on_write(snapshot: dict) -> None:
            if self._shareable:
                publish(self.part(snapshot))
            else:
                self._unshared = snapshot

        self._share = lambda snapshot: publish(self.part(snapshot))
        return on_write

    def part(self, snapshot: dict) -> dict:
        """`snapshot` with this node's `in_progress` (`[folder, recursive, counters]` of each item it holds)
        and `lost` counters."""
        return {**snapshot, "in_progress": [[*item, dict(c)] for item, c in self.progress.items() if item],
                "lost": dict(self.lost)}

    @contextmanager
    def _counting(self):
        self._shareable = False
        try:
            yield
        finally:
            self._shareable = True
            if self._unshared is not None and self._share is not None:
                self._unshared = None
                self._share(self.status.snapshot())

    def _tally(self) -> Counter:
        s = self.status
        return Counter(enumerated_files=s.enumerated_files, files_processed=s.files_processed,
                       files_skipped=s.files_skipped)

    def _error(self, path: str, message: str) -> None:
        self.progress.setdefault(self._item_of_batch.get(path, self.walking), Counter())["errors"] += 1
        super()._error(path, message)

    # -- what is read and written, per item -------------------------------------
    def _dispatch(self, chunk, writer, governor):
        with self._counting():
            before = self._tally()
            batches = super()._dispatch(chunk, writer, governor)
            self.progress.setdefault(self.walking, Counter()).update(self._tally() - before)
        for batch in batches:
            for entry in batch:
                self.item_of.setdefault(entry.path, []).append(item := self.walking)
                self.outstanding[item] = self.outstanding.get(item, 0) + 1
        return batches

    def _write(self, writer) -> None:
        written = [self._written(o.entry.path) for o in self.pending]
        with self._counting():
            self._item_of_batch = {o.entry.path: item for o, item in zip(self.pending, written, strict=True)}
            for item in written:
                self.progress.setdefault(item, Counter())["files_processed"] += 1
            try:
                super()._write(writer)
            finally:
                self._item_of_batch = {}
        for item in written:
            self.outstanding[item] -= 1
        for item in set(written):
            self._maybe_done(item)

    def _written(self, path: str) -> tuple[str, bool]:
        items = self.item_of[path]
        item = items.pop(0)
        if not items:
            del self.item_of[path]
        return item

    def _finish(self, writer) -> str:
        """The coordinator, every item done: remove files gone from the NAS when the whole cluster's
        walk listed everything without an error."""
        if not self.coordinator:
            return "done"
        remaining, files, errors = self.items.totals()
        status = self.status
        if remaining or not self.walk_done or errors:
            status.warn("Some folders of the NAS could not be listed: files no longer found there were kept "
                        "in the index. They are removed after a run that lists the whole NAS without errors.")
        elif files == 0 and writer.conn.execute("SELECT 1 FROM files LIMIT 1").fetchone():
            status.warn("The NAS folder is empty although the index holds files: is the share unmounted? "
                        "The index was kept as it was.")
        else:
            status.update(files_removed=writer.remove_unseen(self.scope.folder, self.scope.covers))
        return "done"


class ClusterHelper:
    """On every node: takes part in the cluster's run that another node started (a thread of its own)."""

    def __init__(self, app, cluster):
        from .status import IndexStatus

        self.app, self.cluster = app, cluster
        s = app.settings
        self.indexer = Indexer(app.catalog, IndexStatus(None), app.source, lambda: app.settings.Workers,
                               throttle=s.Throttle, excluded_folders=s.ExcludedFolders,
                               skipped_extensions=s.SkippedExtensions)
        self._quit = threading.Event()
        self._last = None  # the run this node took part in last (done: it takes no part again)
        self._thread = threading.Thread(target=self._loop, name="nas-cluster-helper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._quit.wait(POLL):
            try:
                self._help_once()
            except Exception:  # never the end of the helper: the next look may find work
                log.exception("NAS cluster: taking part in a run failed")

    def _help_once(self) -> None:
        if self.app.indexer.running:
            return  # this node coordinates the run: it reads its share there
        try:
            found = self.cluster.run_to_help()
        except store.DatabaseUnavailable:
            return
        if found is None or found == self._last:
            return
        run_id, full, folder = self._last = found
        status = self.indexer.status
        part = ClusterRunPart(self.indexer, full, self.indexer.scope(folder), "cluster", self.cluster, run_id=run_id)
        # this node's counters, summed in GET /nas/status
        status.on_write = part.share_with(lambda snapshot: self.cluster.publish_part(run_id, snapshot))
        self.indexer._stop.clear()
        status.start(self.app.settings.Workers)
        try:
            part.execute()
        except Exception as exc:  # this node's part failed: its items return to the others
            log.warning("NAS cluster: this node's part of run %s ended: %s", run_id, getattr(exc, "message", exc))
        status.set_phase("idle")
        status.on_write = None

    def stop(self) -> None:
        self._quit.set()
        self.indexer.stop()
        self._thread.join(30)

"""``python -m index_builder``: build, list, promote, load and gc indexes in a store.

Exit status: 0 done; 1 failed (one line on stderr says why); 2 bad usage; 3 a channel moved
while we worked (a concurrent publisher won the compare-and-swap; nothing was overwritten); 4 the
quality gate refused to move the channel (the index is published, not promoted).

Over 400 lines: it is the one place where the seven commands' options, their defaults from the
settings and their output (the summary table, list's and gc's reports for the store and for
Elasticsearch or PostgreSQL, the evaluation's tables) are written, which a user reads as one
``--help``; the work itself is in ``job``, ``publish``, ``quality``, ``elastic`` and ``postgres``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from functions.catalog import is_index_id
from functions.embeddings import make_embedder
from functions.errors import ConfigurationError, RagError, WriteConflict
from functions.events import INDEX_PROMOTION_REFUSED, INDEX_PUBLISHED
from functions.events import publish as publish_event
from functions.logs import configure, redact
from functions.settings import Settings
from functions.storage import Store, open_store

from .job import DryRun, dry_run, run_build
from .limits import MIB, Limits
from .progress import Progress, human_bytes
from .publish import catalog, collect_garbage, load, promote
from .quality import (
    EXIT_REFUSED,
    ChannelGate,
    Evaluation,
    Evaluator,
    Gate,
    PromotionRefused,
    figures,
    read_questions,
)

if TYPE_CHECKING:
    from .elastic import Cluster, LoadedIndex
    from .postgres import Database, LoadedTable

    Mirror = Cluster | Database

EXIT_FAILED = 1
EXIT_CONFLICT = 3
_SKIPPED_IN_EVENT = 20  # the first skipped files named in index.published; all are counted


def _keep(text: str) -> int:
    """``gc --keep``: a whole number, 0 or more."""
    try:
        keep = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if keep < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {keep}")
    return keep


def _positive(text: str) -> int:
    """A limit: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _share(text: str) -> float:
    """A tolerance or a floor: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {value}")
    return value


def _k(text: str) -> int:
    """``--k``: 1 to 100."""
    k = _positive(text)
    if k > 100:
        raise argparse.ArgumentTypeError(f"must be 100 or less, not {k}")
    return k


def _parser(settings: Settings) -> argparse.ArgumentParser:
    # The global options are accepted before the command and after it (the README writes both):
    # the commands get them too, defaulting to "not given" so they never undo a value given first.
    parser = argparse.ArgumentParser(
        prog="python -m index_builder", description=__doc__.split("\n")[0]
    )
    store_help = "store URI: s3://bucket/prefix, file:///path or a folder (default: $RAG_STORE_URI)"
    parser.add_argument("--store", default=settings.store_uri, help=store_help)
    es_help = (
        "Elasticsearch URL: load indexes there and move channels' aliases "
        "(default: $RAG_ELASTICSEARCH_URL; credentials only from the environment)"
    )
    parser.add_argument("--elasticsearch", default=settings.elasticsearch_url, help=es_help)
    pg_help = (
        "PostgreSQL (with pgvector) connection string: load indexes there and move channels' "
        "rows (default: $RAG_POSTGRES_DSN; postgresql:// alone takes libpq's PG* variables)"
    )
    dsn = settings.postgres_dsn.get_secret_value() if settings.postgres_dsn else None
    parser.add_argument("--postgres", default=dsn or None, metavar="DSN", help=pg_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--elasticsearch", default=argparse.SUPPRESS, help=es_help)
    common.add_argument("--postgres", default=argparse.SUPPRESS, metavar="DSN", help=pg_help)
    commands = parser.add_subparsers(dest="command", required=True)
    questions = argparse.ArgumentParser(add_help=False)
    questions.add_argument(
        "--questions",
        default=settings.eval_questions,
        help="the question set, a path or s3://bucket/key (default: $RAG_EVAL_QUESTIONS)",
    )
    questions.add_argument(
        "--k",
        type=_k,
        default=settings.eval_k,
        help="hit rate and MRR among the k best chunks (default: $RAG_EVAL_K or 10)",
    )
    gating = argparse.ArgumentParser(add_help=False, parents=[questions])
    gating.add_argument(
        "--gate-metric",
        choices=["mrr", "hit_rate"],
        default=settings.eval_metric,
        help="the figure the quality gate compares (default: $RAG_EVAL_METRIC or mrr)",
    )
    gating.add_argument(
        "--tolerance",
        type=_share,
        default=settings.eval_tolerance,
        help="how far below the serving index's figure the new one may be "
        "(default: $RAG_EVAL_TOLERANCE or 0.02)",
    )
    gating.add_argument(
        "--floor",
        type=_share,
        default=settings.eval_floor,
        help="the least figure the new index must reach (default: $RAG_EVAL_FLOOR or none)",
    )
    gating.add_argument(
        "--force",
        action="store_true",
        help="move the channel whatever the quality gate says (the figures are still shown)",
    )

    def command(
        name: str, help: str, parents: tuple[argparse.ArgumentParser, ...] = ()
    ) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common, *parents])

    build = command("build", "build an index from documents and publish it", (gating,))
    build.add_argument(
        "--source",
        default=settings.source_uri,
        required=settings.source_uri is None,
        help="a folder or s3://bucket/prefix of documents (default: $RAG_SOURCE_URI)",
    )
    build.add_argument("--channel", help="move this channel to the new index (compare-and-swap)")
    build.add_argument(
        "--create-channel",
        action="store_true",
        help="create --channel if it does not exist yet (else a missing channel is an error)",
    )
    build.add_argument(
        "--embed-provider", default=settings.embed_provider, choices=["ollama", "local"]
    )
    build.add_argument(
        "--embed-model", default=settings.embed_model, help="default: the provider's"
    )
    build.add_argument(
        "--chunk-size",
        type=int,
        default=settings.chunk_size,
        help="tokens; default 512, or 200 for local",
    )
    build.add_argument("--chunk-overlap", type=int, default=settings.chunk_overlap)
    build.add_argument("--batch-size", type=int, default=settings.embed_batch_size)
    build.add_argument(
        "--on-unreadable",
        choices=["skip", "fail"],
        default=settings.on_unreadable,
        help="a file that cannot be read (binary, not UTF-8, a corrupt PDF): leave it out with "
        "a warning, or fail the build (default: $RAG_ON_UNREADABLE or skip)",
    )
    build.add_argument(
        "--max-file-mb",
        type=_positive,
        default=settings.max_file_mb,
        help="a source file of more MiB is unreadable (default: $RAG_MAX_FILE_MB or 50)",
    )
    build.add_argument(
        "--max-pdf-pages",
        type=_positive,
        default=settings.max_pdf_pages,
        help="a PDF of more pages is unreadable (default: $RAG_MAX_PDF_PAGES or 2000)",
    )
    build.add_argument(
        "--max-file-chars",
        type=_positive,
        default=settings.max_file_chars,
        help="a file of more characters of text is unreadable "
        "(default: $RAG_MAX_FILE_CHARS or 5000000)",
    )
    build.add_argument(
        "--max-chunks",
        type=_positive,
        default=settings.max_chunks,
        help="a build of more chunks fails before anything is embedded "
        "(default: $RAG_MAX_CHUNKS or 1000000)",
    )
    build.add_argument(
        "--dry-run",
        action="store_true",
        help="read and chunk, say what would be embedded, reused and uploaded; change nothing",
    )

    command("list", "list indexes and channels")

    prom = command("promote", "point a channel at an existing index", (gating,))
    prom.add_argument("--channel", required=True)
    prom.add_argument("--index", required=True, help="index id")
    prom.add_argument(
        "--expect", help="refuse unless the channel currently points at this index id"
    )
    prom.add_argument(
        "--create-channel",
        action="store_true",
        help="create the channel if it does not exist yet (else that is an error)",
    )

    loading = command(
        "load",
        "load a published index into Elasticsearch or PostgreSQL (nothing is embedded again)",
    )
    loading.add_argument(
        "name",
        metavar="INDEX_ID_OR_CHANNEL",
        help="an index id, or a channel: its current index, and the channel's alias (row) "
        "follows (the store's channel does not move)",
    )

    evaluate = command(
        "eval",
        "evaluate a question set on an index: hit rate and MRR at k (stored beside the index)",
        (questions,),
    )
    evaluate.add_argument("name", metavar="INDEX_ID_OR_CHANNEL")
    evaluate.add_argument(
        "--format",
        choices=["table", "json"],
        help="a table on a terminal, JSON otherwise (default)",
    )
    asking = command(
        "questions",
        "draft a question set from an index's chunks with the LLM (review it before gating)",
    )
    asking.add_argument("name", metavar="INDEX_ID_OR_CHANNEL")
    asking.add_argument("--out", required=True, help="the file to write (not overwritten)")
    asking.add_argument("--count", type=_positive, default=20, help="chunks to ask about")
    asking.add_argument(
        "--per-chunk", type=_positive, default=1, help="questions to ask of each chunk"
    )

    gc = command("gc", "delete old indexes (never one a channel points to)")
    gc.add_argument(
        "--keep", type=_keep, required=True, help="newest complete indexes to keep (0 or more)"
    )
    gc.add_argument("--dry-run", action="store_true")
    return parser


def _cluster(args: argparse.Namespace, settings: Settings) -> Mirror | None:
    """The Elasticsearch that ``--elasticsearch`` names, with the credentials of the settings, or
    the PostgreSQL that ``--postgres`` names; one of them at most."""
    if args.elasticsearch and args.postgres:
        raise ConfigurationError(
            "--elasticsearch and --postgres (or RAG_ELASTICSEARCH_URL and RAG_POSTGRES_DSN) are "
            "both set: indexes are loaded into one serving backend at a time"
        )
    if args.postgres:
        from .postgres import Database

        return Database(args.postgres, schema=settings.postgres_schema)
    if not args.elasticsearch:
        return None
    from functions.es_client import credentials

    from .elastic import Cluster  # its client only where it is used (0.4 s to import)

    return Cluster(
        args.elasticsearch,
        **credentials(settings),
        prefix=settings.elasticsearch_index_prefix,
        replicas=settings.elasticsearch_replicas,
        timeout_s=settings.elasticsearch_timeout_s,
    )


def _build(
    args: argparse.Namespace, store: Store, settings: Settings, cluster: Mirror | None
) -> None:
    embedder = make_embedder(
        args.embed_provider,
        args.embed_model,
        ollama_host=settings.ollama_host,
        batch_size=args.batch_size,
    )
    progress = Progress()  # bars on a terminal; one log line per phase in a CronJob
    options = {
        "channel": args.channel,
        "create_channel": args.create_channel,
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "on_unreadable": args.on_unreadable,
        "limits": Limits(
            file_bytes=args.max_file_mb * MIB,
            pdf_pages=args.max_pdf_pages,
            file_chars=args.max_file_chars,
            chunks=args.max_chunks,
        ),
        "progress": progress,
    }
    if args.questions and not args.channel:
        print(
            "warning: the question set gates channel moves: without --channel nothing is gated",
            file=sys.stderr,
        )
    if args.dry_run:
        if args.questions and args.channel:  # a broken set fails now, not after the build
            read_questions(args.questions)
        _print_plan(dry_run(store, args.source, embedder, **options), embedder.model, args)
        return
    if cluster is not None:  # before an hour of embedding, not after
        if args.channel:
            cluster.alias(args.channel)
        cluster.check()
    gate = _gate(args, settings, store) if args.channel else None  # the set read before, too
    try:
        manifest = run_build(store, args.source, embedder, mirror=cluster, gate=gate, **options)
    except PromotionRefused as refused:
        print(progress.summary(), file=sys.stderr)
        if settings.sink:
            _announce(
                settings.sink,
                INDEX_PROMOTION_REFUSED,
                {
                    "index_id": refused.manifest.index_id,
                    "channel": refused.channel,
                    "serving": refused.decision.serving.index_id
                    if refused.decision.serving
                    else None,
                    "created_at": refused.manifest.created_at.isoformat(),
                    "embedding": refused.manifest.embedding.model_dump(),
                    "counts": refused.manifest.counts.model_dump(),
                    "quality": {**refused.decision.event_data(), "forced": False},
                },
            )
        print(refused.manifest.index_id)  # published all the same
        raise
    finally:
        if gate is not None:
            gate.evaluator.close()
    counts = manifest.counts
    size = sum(entry.size for entry in manifest.files.values())
    print(progress.summary(), file=sys.stderr)
    _tell(gate, args.channel, manifest.index_id)
    if args.channel and settings.sink:
        # The channel pointer is the truth; the event only saves followers a wait. A failed send
        # is reported, not fatal.
        data = {
            "index_id": manifest.index_id,
            "channel": args.channel,
            "created_at": manifest.created_at.isoformat(),
            "embedding": manifest.embedding.model_dump(),
            "counts": counts.model_dump(),
            "bytes": size,
            "phases": {
                phase.name: {"done": phase.done, "unit": phase.unit, "seconds": phase.seconds}
                for phase in progress.phases
            },
            "skipped": {
                "files": len(progress.skipped),
                "first": [
                    {"source": source, "reason": reason}
                    for source, reason in progress.skipped[:_SKIPPED_IN_EVENT]
                ],
            },
            "limits": {
                "max_file_mb": args.max_file_mb,
                "max_pdf_pages": args.max_pdf_pages,
                "max_file_chars": args.max_file_chars,
                "max_chunks": args.max_chunks,
            },
            # The gate's decision and both figures; null where no question set gates the build.
            "quality": {**gate.decision.event_data(), "forced": args.force}
            if gate and gate.decision
            else None,
        }
        _announce(settings.sink, INDEX_PUBLISHED, data)
    skipped = f", {len(progress.skipped)} files skipped" if progress.skipped else ""
    print(
        f"built {manifest.index_id}: {counts.documents} documents, {counts.chunks} chunks, "
        f"{counts.embedded} embedded, {counts.reused} reused, {human_bytes(size)}{skipped}"
        + (f"; in {cluster.label} as {cluster.index_name(manifest.index_id)}" if cluster else "")
        + (f"; channel {args.channel} moved" if args.channel else ""),
        file=sys.stderr,
    )
    print(manifest.index_id)


def _announce(sink: str, event_type: str, data: dict[str, Any]) -> None:
    """Send one event to K_SINK. The channel pointer is the truth; the event only saves
    followers a wait, so a failed send is reported, not fatal."""
    failure = publish_event(sink, event_type, "knative-rag/index-builder", data)
    name = event_type.removeprefix("dev.knative-rag.")
    if failure:
        print(f"warning: {name} not delivered to K_SINK: {redact(failure)}", file=sys.stderr)
    else:
        print(f"announced {name} {data['index_id']} to K_SINK", file=sys.stderr)


def _evaluator(args: argparse.Namespace, settings: Settings, store: Store) -> Evaluator:
    """The evaluator of ``--questions`` at ``--k``, through the serving backend the global
    options name: Elasticsearch or PostgreSQL where given, else the artifact (exact search)."""
    from .quality import make_evaluator

    if not args.questions:
        raise ConfigurationError("no question set: pass --questions or set RAG_EVAL_QUESTIONS")
    questions = read_questions(args.questions)
    if args.elasticsearch:
        update: dict[str, Any] = {
            "backend": "elasticsearch",
            "elasticsearch_url": args.elasticsearch,
        }
    elif args.postgres:
        from pydantic import SecretStr

        update = {"backend": "postgres", "postgres_dsn": SecretStr(args.postgres)}
    else:
        update = {"backend": "artifact"}
    return make_evaluator(settings.model_copy(update=update), store, questions, k=args.k)


def _gate(args: argparse.Namespace, settings: Settings, store: Store) -> ChannelGate | None:
    """The quality gate a channel move passes, where a question set is given; ``--force``
    decides and tells but never refuses."""
    if not args.questions:
        return None
    gate = Gate(metric=args.gate_metric, tolerance=args.tolerance, floor=args.floor)
    evaluator = _evaluator(args, settings, store)
    if evaluator.questions.generated is not None:
        print(
            f"warning: question set {args.questions} was generated by "
            f"{evaluator.questions.generated.by} and gates this channel: review it",
            file=sys.stderr,
        )
    return ChannelGate(evaluator, gate, enforce=not args.force)


def _tell(gate: ChannelGate | None, channel: str | None, index_id: str) -> None:
    """The gate's figures after a channel moved, and that ``--force`` overrode a refusal."""
    if gate is None or gate.decision is None:
        return
    print(figures(gate.decision), file=sys.stderr)
    if not gate.decision.passed:
        print(
            f"quality gate overridden by --force: channel {channel} moved to {index_id}",
            file=sys.stderr,
        )


def _print_evaluation(evaluation: Evaluation, stored: bool) -> None:
    """An evaluation as a table: one row per question, then the totals."""
    print(
        f"index {evaluation.index_id} ({evaluation.backend}, {evaluation.model}): "
        f"{evaluation.questions} questions, set {evaluation.questions_sha256[:12]}, "
        f"k={evaluation.k}"
    )
    print(f"{'#':>3}  {'hit':<3} {'rank':>4}  {'question':<52} first retrieved")
    for n, result in enumerate(evaluation.results, 1):
        question = result.question if len(result.question) <= 52 else result.question[:51] + "…"
        rank = str(result.rank) if result.rank else "-"
        first = result.retrieved[0] if result.retrieved else "-"
        hit = "yes" if result.hit else "no"
        print(f"{n:>3}  {hit:<3} {rank:>4}  {question:<52} {first}")
    how = "read back from the store" if stored else f"computed in {evaluation.seconds:.1f} s"
    print(f"hit rate {evaluation.hit_rate:.4f}   MRR {evaluation.mrr:.4f}   ({how})")


def _print_plan(run: DryRun, model: str, args: argparse.Namespace) -> None:
    plan, size = run.plan, run.estimated_bytes
    unchanged = f"; channel {args.channel} unchanged" if args.channel else ""
    reused = (
        f"vectors of {run.previous_index}"
        if run.previous_index
        else "no index of this model to reuse"
    )
    upload = (
        f"about {human_bytes(size)} in 7 files"
        if size is not None
        else "7 files (their size depends on the model's dimension)"
    )
    print(
        f"dry run: nothing was embedded or uploaded{unchanged}\n"
        f"documents     {plan.documents:,}\n"
        f"chunks        {len(plan.records):,}\n"
        f"to embed      {len(plan.todo):,} (with {model})\n"
        f"reused        {plan.reused:,} ({reused})\n"
        f"text          {human_bytes(plan.text_bytes)}\n"
        f"upload        {upload}"
    )


def _list(store: Store, cluster: Mirror | None) -> None:
    indexes, channels = catalog(store)
    if not indexes and not channels:
        print(f"{store.uri} holds no indexes and no channels", file=sys.stderr)
    loaded = {found.index_id: found for found in cluster.indexes()} if cluster else {}
    aliased = {channel: found.index_id for found in loaded.values() for channel in found.channels}
    pointed: dict[str, list[str]] = {}
    for name, pointer in sorted(channels.items()):
        pointed.setdefault(pointer.index_id, []).append(name)
        alias = f"  {_pointer(cluster)} -> {aliased.get(name, 'none')}" if cluster else ""
        print(
            f"channel {name:<16} -> {pointer.index_id}  "
            f"(published {pointer.published_at:%Y-%m-%d %H:%M:%S}Z){alias}"
        )
    for info in indexes:
        state = "" if info.complete else "  INCOMPLETE"
        tags = f"  [{', '.join(pointed[info.index_id])}]" if info.index_id in pointed else ""
        found = loaded.pop(info.index_id, None)
        es = "" if cluster is None else f"  {cluster.label.lower()}: {_loaded(found)}"
        print(
            f"index   {info.index_id}  {info.size / 1e6:10.2f} MB  "
            f"{info.modified:%Y-%m-%d %H:%M}Z{tags}{state}{es}"
        )
    label = cluster.label.lower() if cluster else ""
    for found in loaded.values():  # in the mirror only: gc deletes it unless a channel names it
        print(f"{label} {found.name}  {_loaded(found)}  (not in the store)")


def _pointer(mirror: Mirror) -> str:
    """What follows a channel in the mirror: an alias in Elasticsearch, a row in PostgreSQL."""
    return "alias" if mirror.label == "Elasticsearch" else "row"


def _loaded(found: LoadedIndex | LoadedTable | None) -> str:
    """An index's state in Elasticsearch or PostgreSQL, for ``list``."""
    if found is None:
        return "not loaded"
    aliases = f" [{', '.join(found.channels)}]" if found.channels else ""
    return f"{found.docs:,} docs{aliases}" + ("" if found.complete else " INCOMPLETE")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    settings = Settings()
    args = _parser(settings).parse_args(argv)
    # Our own loggers at RAG_LOG_LEVEL; libraries (botocore, httpx) only warn; all redacted.
    configure(
        settings.log_level,
        fmt="%(levelname)s %(name)s: %(message)s",
        log_format=settings.log_format,
        replace=True,
    )
    # The Elasticsearch transport warns at each retry; what failed in the end is our one line.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    try:
        _run(args, settings)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output went away (`list | head`): normal for a command line tool.
        # Later writes, and the flush at exit, go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except PromotionRefused as exc:
        print(figures(exc.decision), file=sys.stderr)
        print(
            f"refused: channel {exc.channel} not moved to {exc.manifest.index_id}, which stays "
            "published (pass --force to move it anyway)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    except WriteConflict as exc:
        print(
            f"error: {redact(exc.message)} "
            "(another publisher moved it first; nothing was overwritten)",
            file=sys.stderr,
        )
        return EXIT_CONFLICT
    except RagError as exc:
        print(f"error: {exc.title}: {redact(exc.message)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug or an error nobody translated: one line, never a traceback
        logging.getLogger("index_builder").debug("unexpected error", exc_info=exc)
        print(f"error: unexpected {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if not args.store:
        raise ConfigurationError("no store: pass --store or set RAG_STORE_URI")
    store = open_store(args.store)
    cluster = _cluster(args, settings)
    try:
        _command(args, settings, store, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _command(
    args: argparse.Namespace, settings: Settings, store: Store, cluster: Mirror | None
) -> None:
    if args.command == "build":
        _build(args, store, settings, cluster)  # checks that it can write there, before it reads
        return
    store.check()  # a store that does not exist is an error, not an empty listing
    if args.command == "list":
        _list(store, cluster)
    elif args.command == "promote":
        if cluster is not None:
            cluster.alias(args.channel)
        progress = Progress()
        gate = _gate(args, settings, store)
        try:
            pointer = promote(
                store,
                args.channel,
                args.index,
                expected_index=args.expect,
                create_channel=args.create_channel,
                mirror=cluster,
                progress=progress,
                gate=gate,
            )
        finally:
            if gate is not None:
                gate.evaluator.close()
        _tell(gate, args.channel, pointer.index_id)
        print(f"channel {args.channel} -> {pointer.index_id}")
        if cluster is not None:
            print(progress.summary(), file=sys.stderr)
            print(
                f"{_pointer(cluster)} {cluster.alias(args.channel)} -> "
                f"{cluster.index_name(pointer.index_id)}"
            )
    elif args.command == "load":
        if cluster is None:
            raise ConfigurationError(
                "load needs --elasticsearch or RAG_ELASTICSEARCH_URL, or --postgres or "
                "RAG_POSTGRES_DSN"
            )
        if not is_index_id(args.name):
            cluster.alias(args.name)
        progress = Progress()
        manifest, fresh = load(store, args.name, cluster, progress)
        name = cluster.index_name(manifest.index_id)
        print(progress.summary(), file=sys.stderr)
        print(
            (
                f"loaded {manifest.index_id}: {manifest.counts.chunks} chunks"
                if fresh
                else f"{manifest.index_id} was loaded already"
            )
            + f", as {name}",
            file=sys.stderr,
        )
        print(name)
        if not is_index_id(args.name):
            print(f"{_pointer(cluster)} {cluster.alias(args.name)} -> {name}")
    elif args.command == "eval":
        evaluator = _evaluator(args, settings, store)
        try:
            evaluation = evaluator.evaluate(args.name)
        finally:
            evaluator.close()
        if (args.format or ("table" if sys.stdout.isatty() else "json")) == "table":
            _print_evaluation(evaluation, stored=evaluator.computed == 0)
        else:
            print(evaluation.model_dump_json(indent=2))
    elif args.command == "questions":
        _draft(args, settings, store)
    elif args.command == "gc":
        collected = collect_garbage(store, args.keep, dry_run=args.dry_run, mirror=cluster)
        for index_id in collected.indexes:
            print(("would delete " if args.dry_run else "deleted ") + index_id)
        for key in collected.uploads:
            print(("would abort " if args.dry_run else "aborted ") + f"upload {key}")
        for name in collected.mirrored:
            print(
                ("would delete " if args.dry_run else "deleted ")
                + f"{cluster.label.lower() if cluster else ''} {name}"
            )


def _draft(args: argparse.Namespace, settings: Settings, store: Store) -> None:
    """``questions``: draft a question set from an index's chunks with the Ollama LLM."""
    import tempfile
    from pathlib import Path

    from functions.catalog import fetch_artifact, read_manifest
    from functions.composition import configured_llm

    from .quality import draft_questions

    out = Path(args.out)
    if out.exists():
        raise ConfigurationError(f"{out} exists: the draft is never written over a file")
    manifest = read_manifest(store, args.name)
    with tempfile.TemporaryDirectory(prefix="rag-questions-") as tmp:
        artifact = fetch_artifact(store, manifest, Path(tmp))
        records = [artifact.record(row) for row in range(len(artifact))]
    drafted = draft_questions(
        records,
        configured_llm(settings),
        index_id=manifest.index_id,
        count=args.count,
        per_chunk=args.per_chunk,
    )
    with out.open("x", encoding="utf-8") as file:
        file.write(drafted.model_dump_json(indent=2, exclude_none=True) + "\n")
    print(
        f"wrote {len(drafted.questions)} questions about {manifest.index_id} to {out}: "
        "generated, review them before they gate a channel",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())

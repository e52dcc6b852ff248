"""The one codec of stored records: every record type round-trips, files written before (literal lines of the
format as it was written) still read and are written again byte for byte, and a bad record is named."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from gemini_batch.coordination.ledger import Claim, EventKind, LedgerEvent, ShardJob
from gemini_batch.core import jsonl, records
from gemini_batch.core.batch_requests import ShardManifest, ShardPiece, ShardPieces
from gemini_batch.core.cost import CostEstimate
from gemini_batch.core.events import OutcomeEvents
from gemini_batch.core.locations import as_path
from gemini_batch.core.planned import PlannedDocument, PlannedPart, Route
from gemini_batch.core.results import (
    DocumentRecord,
    DocumentStatus,
    OutcomeStatus,
    PartRecord,
    RowOutcome,
    RunSummary,
    Usage,
)
from gemini_batch.core.settings import RETENTIONS, Retention
from gemini_batch.core.staged import StagedPart, StageFailure, stage_record
from gemini_batch.steps.collection import RoundCounts
from gemini_batch.steps.plan import PlanSummary

# Lines as the code before the codec wrote them (its to_json, then orjson.dumps), kept literally.
OLD_PLAN_LINE = (
    b'{"document":"caf\\\\xe9/long.pdf","uri":"file:///src/caf%E9/long.pdf","size":1000,'
    b'"mime_type":"application/pdf","sha256":"abababababababababababababababababababababababababababababababab",'
    b'"page_count":120,"parts":[{"key":"k1","pages":[1,50],"size":600,"reused":false,"route":"staged"},'
    b'{"key":"k2","pages":[51,120],"size":400,"reused":true,"route":"inline"}],"rejected":null,'
    b'"path_quoted":"caf%E9/long.pdf"}'
)
OLD_REJECTED_PLAN_LINE = (
    b'{"document":"notes.txt","uri":"file:///src/notes.txt","size":12,"mime_type":null,"sha256":null,'
    b'"page_count":null,"parts":[],"rejected":"empty file"}'
)
PLAN_LINE_BEFORE_ROUTES = (
    b'{"document":"a.pdf","uri":"file:///src/a.pdf","size":10,"mime_type":"application/pdf","sha256":"ab",'
    b'"page_count":1,"parts":[{"key":"k1","pages":null,"size":10,"reused":false}],"rejected":null}'
)
OLD_OUTCOMES = (
    b'{"key":"k1","status":"succeeded","data":{"total":12.5,"items":[1]},"error":null,"finish_reason":"STOP",'
    b'"input_tokens":300,"output_tokens":20,"model_version":"gemini-2.5-flash","raw_text":null,"reused":false}',
    b'{"key":"k2","status":"failed","data":null,"error":"answer is not JSON: empty answer","finish_reason":'
    b'"MAX_TOKENS","input_tokens":300,"output_tokens":50,"model_version":"m","raw_text":"{\\"a","reused":true}',
)
OLD_RESULTS_LINE = (
    b'{"document":"a.pdf","status":"failed","data":null,"error":"pages 51-120: truncated","parts":['
    b'{"key":"k1","pages":[1,50],"status":"succeeded","finish_reason":"STOP","error":null,"reused":false},'
    b'{"key":"k2","pages":[51,120],"status":"failed","finish_reason":"MAX_TOKENS","error":"truncated",'
    b'"reused":true}],"usage":{"input_tokens":600,"output_tokens":70},"reused":false}'
)
OLD_LEDGER_EVENT = (
    b'{"key":"k1","event":"answered","run":"run-a","at":"2026-03-01T10:00:00+00:00","outcome":{"key":"k1",'
    b'"status":"succeeded","data":{"total":12.5,"items":[1]},"error":null,"finish_reason":"STOP",'
    b'"input_tokens":300,"output_tokens":20,"model_version":"gemini-2.5-flash","raw_text":null,"reused":false}}'
)
OLD_END_FRAME = b'{"key":"","event":"end","run":"run-a","at":"2026-03-01T10:00:01+00:00","outcome":{"events":1}}'
FINISHED_STORE_RECORD = (  # the finished-key store of earlier versions: an outcome with finished_at, no event
    b'{"key":"k9","status":"succeeded","data":{"n":9},"error":null,"finish_reason":"STOP","input_tokens":3,'
    b'"output_tokens":2,"model_version":"m","raw_text":null,"run":"run-old","finished_at":"2025-12-01T00:00:00Z"}'
)
OLD_CLAIM = (
    b'{"claim":"run-a-r0","dag_id":"dag","run_id":"manual__1","run":"run-a","round":0,'
    b'"shards":"/work/shards/round-0","built":true,"created_at":"2026-03-01T10:00:00+00:00"}'
)
OLD_SHARD_JOB = b'{"job_name":"batches/1","at":"2026-03-01T10:00:00+00:00","display_name":"gbs-run-a-r0-shard-00000"}'
SHARD_JOB_BEFORE_DISPLAY_NAMES = b'{"job_name":"batches/1","at":"2026-03-01T10:00:00+00:00"}'
OLD_STAGED = (
    b'{"key":"k1","uri":"https://x/files/abc","mime_type":"application/pdf","expires_at":"2026-03-03T10:00:00+00:00"}',
    b'{"key":"k2","error":"staging failed"}',
)
OLD_MANIFEST = b"""{
  "shard_id": "r0-shard-00000",
  "uri": "/w/r0.jsonl",
  "rows": 3,
  "bytes": 120,
  "keys_uri": "/w/r0.keys",
  "manifest_uri": "/w/r0.manifest.json",
  "claim": "run-a-r0",
  "ledger": "/l",
  "adopts": null,
  "tokens": 900,
  "piece_of": null
}"""
OLD_PIECES = b"""{
  "shard_id": "s",
  "pieces": [
    {
      "manifest_uri": "/w/s.p1.manifest.json",
      "display_name": "gbs-s-p1",
      "rows": 2,
      "src": null,
      "started_at": null,
      "job_name": "batches/2",
      "refused": null,
      "refused_alone_since": null
    }
  ],
  "quota_wait_since": "2026-03-01T10:00:00+00:00",
  "over_quota_alone": false
}"""
OLD_PLAN_SUMMARY = (
    b'{"plan_uri":"/w/plan.jsonl","documents":3,"rejected":1,"parts":4,"reused_parts":1,"duplicate_parts":0,'
    b'"requests":3,"routes":{"inline":2,"in_place":0,"staged":1},'
    b'"estimate":{"requests":3,"input_tokens":3000,"output_tokens":300,"usd":0.001235}}'
)
OLD_RUN_SUMMARY = (
    b'{"documents":1,"succeeded":0,"failed":1,"rejected":0,"reused":0,"requests":2,"jobs":1,"retry_rounds":0,'
    b'"input_tokens":600,"output_tokens":70,"estimated_cost_usd":null}'
)


@pytest.mark.parametrize(
    ("line", "type_"),
    [
        (OLD_PLAN_LINE, PlannedDocument),
        (OLD_REJECTED_PLAN_LINE, PlannedDocument),
        *((line, RowOutcome) for line in OLD_OUTCOMES),
        (OLD_RESULTS_LINE, DocumentRecord),
        (OLD_LEDGER_EVENT, LedgerEvent),
        (OLD_END_FRAME, LedgerEvent),
        (OLD_CLAIM, Claim),
        (OLD_SHARD_JOB, ShardJob),
        (OLD_STAGED[0], StagedPart),
        (OLD_STAGED[1], StageFailure),
        (OLD_PLAN_SUMMARY, PlanSummary),
        (OLD_RUN_SUMMARY, RunSummary),
    ],
)
def test_a_line_written_before_reads_and_is_written_again_byte_for_byte(line, type_):
    record = records.decode(line, type_)
    assert isinstance(record, type_)
    assert records.encode(record) == line
    assert records.convert(orjson.loads(line), type_) == record  # the same record from a dict already parsed


@pytest.mark.parametrize(("text", "type_"), [(OLD_MANIFEST, ShardManifest), (OLD_PIECES, ShardPieces)])
def test_an_indented_file_written_before_reads_and_is_written_again_the_same(tmp_path, text, type_):
    path = as_path(tmp_path / "record.json")
    path.write_bytes(text)
    record = type_.load(path)
    assert record is not None
    record.save(path)
    assert path.read_bytes() == text


def test_an_old_plan_line_keeps_the_exact_path_and_its_routes():
    doc = records.decode(OLD_PLAN_LINE, PlannedDocument)
    assert doc.path == "caf\udce9/long.pdf" and doc.document == "caf\\xe9/long.pdf"
    assert [part.route for part in doc.parts] == [Route.STAGED, Route.INLINE]
    assert doc.parts[0].pages == (1, 50) and doc.read_as == ("application/pdf", "ab" * 32)
    assert (
        PlannedDocument.planned(
            doc.path, doc.uri, doc.size, doc.mime_type, doc.sha256, doc.page_count, doc.parts, doc.rejected
        )
        == doc
    )
    rejected = records.decode(OLD_REJECTED_PLAN_LINE, PlannedDocument)
    assert rejected.path == "notes.txt" and rejected.path_quoted is None and rejected.rejected == "empty file"
    assert b"path_quoted" not in records.encode(rejected), "written only for a name that is not UTF-8"


def test_a_plan_line_written_before_routing_stages_every_part():
    (part,) = records.decode(PLAN_LINE_BEFORE_ROUTES, PlannedDocument).parts
    assert part.route is Route.STAGED and part.pages is None


def test_old_outcomes_and_results_lines_read_as_their_types():
    succeeded, failed = (records.decode(line, RowOutcome) for line in OLD_OUTCOMES)
    assert succeeded.status is OutcomeStatus.SUCCEEDED and succeeded.data == {"total": 12.5, "items": [1]}
    assert failed.status is OutcomeStatus.FAILED and failed.raw_text == '{"a' and failed.reused
    record = records.decode(OLD_RESULTS_LINE, DocumentRecord)
    assert record.status is DocumentStatus.FAILED and record.usage == Usage(600, 70)
    assert [part.status for part in record.parts] == [OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED]
    assert record.parts[1].pages == (51, 120)
    bare = records.decode(b'{"document":"x.pdf","status":"rejected","error":"corrupt"}', DocumentRecord)
    assert bare == DocumentRecord("x.pdf", DocumentStatus.REJECTED, None, "corrupt", (), Usage(0, 0), False)


def test_old_ledger_lines_read_as_events():
    event = LedgerEvent.decode(OLD_LEDGER_EVENT)
    assert (event.key, event.event, event.run) == ("k1", EventKind.ANSWERED, "run-a")
    assert records.convert(event.outcome, RowOutcome) == records.decode(OLD_OUTCOMES[0], RowOutcome)
    assert LedgerEvent.decode(OLD_END_FRAME).outcome == {"events": 1}
    legacy = LedgerEvent.decode(FINISHED_STORE_RECORD)
    assert (legacy.key, legacy.event, legacy.run, legacy.at) == ("k9", "answered", "run-old", "2025-12-01T00:00:00Z")
    assert legacy.outcome["data"] == {"n": 9}
    assert records.decode(SHARD_JOB_BEFORE_DISPLAY_NAMES, ShardJob) == ShardJob(
        "batches/1", "2026-03-01T10:00:00+00:00"
    )
    with pytest.raises(ValueError, match="ledger event"):
        LedgerEvent.decode(b'{"key":"k1","event":"answered"}')
    with pytest.raises(ValueError):
        LedgerEvent.decode(b"[1, 2]")


def test_staging_lines_read_as_a_part_or_a_failure():
    assert stage_record(orjson.loads(OLD_STAGED[0])) == StagedPart(
        "k1", "https://x/files/abc", "application/pdf", "2026-03-03T10:00:00+00:00"
    )
    assert stage_record(orjson.loads(OLD_STAGED[1])) == StageFailure("k2", "staging failed")


OUTCOME = RowOutcome("k1", OutcomeStatus.SUCCEEDED, {"a": [1, None]}, None, "STOP", 3, 2, "m", None)
ROUND_TRIPS = [
    PlannedDocument.planned(
        "dir/caf\udce9.pdf",
        "file:///x",
        5,
        "application/pdf",
        "ab",
        2,
        (PlannedPart("k", (1, 2), 5, False, Route.IN_PLACE),),
        None,
    ),
    PlannedDocument.planned("a.txt", "file:///a", 1, None, None, None, (), "empty"),
    OUTCOME,
    DocumentRecord(
        "a.pdf",
        DocumentStatus.SUCCEEDED,
        {"n": 1},
        None,
        (PartRecord("k", None, OutcomeStatus.SUCCEEDED, "STOP", None, True),),
        Usage(3, 2),
        True,
    ),
    LedgerEvent("k1", EventKind.FAILED, "run-a", "2026-03-01T10:00:00+00:00", records.to_builtins(OUTCOME)),
    Claim("c", "d", "r", "s", 1, "/x", False, "2026-03-01T10:00:00+00:00"),
    ShardJob(None, "2026-03-01T10:00:00+00:00", "gbs-x"),
    ShardManifest("s", "/s.jsonl", 1, 2, "/s.keys", "/s.manifest.json", adopts="ledger", piece_of="t"),
    ShardPieces("s", [ShardPiece("/p1", "gbs-p1", 1, refused="too big")], over_quota_alone=True),
    StagedPart("k", "gs://b/k", "image/png", None),
    StageFailure("k", "gone"),
    CostEstimate(1, 2, 3, None),
    PlanSummary("/p", 1, 0, 1, 0, 0, 1, {Route.INLINE: 1}, CostEstimate(1, 2, 3, 0.5)),
    RunSummary(1, 1, 0, 0, 0, 1, 1, 0, 3, 2, 0.25),
    RoundCounts(2, 1, 1, 2, ["batches/1"]),
]


@pytest.mark.parametrize("record", ROUND_TRIPS, ids=lambda record: type(record).__name__)
def test_every_stored_record_round_trips(record):
    line = records.encode(record)
    assert records.decode(line, type(record)) == record
    assert records.convert(records.to_builtins(record), type(record)) == record
    assert orjson.loads(line) == records.to_builtins(record), "XCom carries the same JSON as the file"


def test_enums_are_written_as_their_plain_values_and_compare_with_them():
    assert records.to_builtins(OUTCOME)["status"] == "succeeded" and type(records.to_builtins(OUTCOME)["status"]) is str
    assert OutcomeStatus.FAILED == "failed" and f"{DocumentStatus.REJECTED}" == "rejected"
    assert [str(route) for route in Route] == ["inline", "in_place", "staged"]
    assert RETENTIONS == ("keep", "staged", "all") and Retention("all") is Retention.ALL


def test_a_jsonl_writer_writes_what_the_codec_encodes(tmp_path):
    path = tmp_path / "records.jsonl"
    with jsonl.writer(str(path)) as write:
        write(OUTCOME)
        write({"key": "k2", "status": "failed"})
    assert path.read_bytes() == records.encode(OUTCOME) + b"\n" + b'{"key":"k2","status":"failed"}\n'
    assert list(jsonl.read(as_path(path))) == [records.to_builtins(OUTCOME), {"key": "k2", "status": "failed"}]
    path.write_bytes(records.encode(OUTCOME) + b"\n" + records.encode(OUTCOME)[:-3])  # a writer killed mid-line
    assert list(jsonl.read_records(as_path(path), RowOutcome)) == [OUTCOME]


@pytest.mark.parametrize(
    ("line", "type_", "message"),
    [
        (
            OLD_OUTCOMES[0].replace(b'"succeeded"', b'"maybe"'),
            RowOutcome,
            r"not a valid outcome record: Invalid enum value 'maybe' - at `\$.status`",
        ),
        (
            OLD_PLAN_LINE.replace(b'"key":"k2",', b""),
            PlannedDocument,
            r"not a valid plan line: Object missing required field `key` - at `\$.parts\[1\]`",
        ),
        (
            OLD_RESULTS_LINE.replace(b'"input_tokens":600', b'"input_tokens":"600"'),
            DocumentRecord,
            r"not a valid results.jsonl record: Expected `int`, got `str` - at `\$.usage.input_tokens`",
        ),
        (
            OLD_CLAIM.replace(b'"round":0,', b""),
            Claim,
            r"not a valid claim: Object missing required field `round`",
        ),
        (b'{"key": "k1", "status": ', RowOutcome, r"not a valid outcome record: Input data was truncated"),
    ],
)
def test_an_invalid_record_is_a_value_error_naming_its_kind_and_field(line, type_, message):
    with pytest.raises(ValueError, match=message):
        records.decode(line, type_)
    if line.endswith(b"}"):
        with pytest.raises(ValueError, match=message):
            records.convert(orjson.loads(line), type_)


@pytest.mark.parametrize("key", ["k1", 'a "quoted\\ key\u2028 é\x01'])
@pytest.mark.parametrize("answered", [True, False])
def test_an_outcomes_event_line_joined_from_parts_is_the_events_encoding(key, answered):
    """Collecting workers join each event line from its parts; it must read back as the LedgerEvent it stands for."""
    outcome = b'{"key":"k1","status":"succeeded"}'
    line = OutcomeEvents('run "1"', "2026-03-01T10:00:00+00:00").line(key, answered, outcome)
    kind = EventKind.ANSWERED if answered else EventKind.FAILED
    assert line == records.encode(LedgerEvent(key, kind, 'run "1"', "2026-03-01T10:00:00+00:00", msgspec.Raw(outcome)))

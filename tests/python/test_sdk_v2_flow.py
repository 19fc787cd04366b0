"""The current SDK (llama-cloud 2.19.0, strict validation on): v2 batches, configurations,
saved webhook configurations, files and directories, on the fleet the 2.13.0 flow ran on.

Run by tests/tests/sdk.rs after test_sdk_flow.py, with the same environment, plus
DOCFLEET_HANDOFF: a JSON file in which the 2.13.0 run left a directory and a parse batch it
made, and in which this run leaves the v2 batch it made over that directory.
"""
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import threading
import time
import urllib.request

import pytest
from llama_cloud import BadRequestError, LlamaCloud, NotFoundError, UnprocessableEntityError

BASE = os.environ["DOCFLEET_API_URL"]
KEY = os.environ["DOCFLEET_API_KEY"]
SAMPLES = pathlib.Path(os.environ["DOCFLEET_SAMPLES"])
HANDOFF = pathlib.Path(os.environ["DOCFLEET_HANDOFF"])
SECRET = "v2-hook-secret"


def client():
    return LlamaCloud(api_key=KEY, base_url=BASE, _strict_response_validation=True, max_retries=0)


def wait(c, batch_id, timeout=60):
    deadline = time.time() + timeout
    while True:
        b = c.batches.get(batch_id)
        if b.status in ("COMPLETED", "FAILED", "CANCELLED"):
            return b
        assert time.time() < deadline, b
        time.sleep(0.1)


class Hooks(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def handoff():
    return json.loads(HANDOFF.read_text())


def test_a_directory_of_the_other_sdk_line_is_batched_with_webhooks(handoff, receiver):
    c = client()
    saved = c.webhook_configs.create(
        webhook_url=f"{receiver}/saved", webhook_events=["batch.success"], webhook_output_format="json",
    )
    batch = c.batches.create(
        source_directory_id=handoff["directory_id"],
        config={"job": {"type": "parse_v2", "configuration_id": "cfg-PARSE_FAST"}},
        webhook_configurations=[{
            "webhook_url": f"{receiver}/inline", "webhook_output_format": "json",
            "webhook_signing_secret": SECRET, "webhook_events": ["batch.pending", "batch.running", "batch.success"],
        }],
        webhook_configuration_ids=[saved.id],
    )
    assert batch.status == "PENDING" and batch.config.job.configuration_id == "cfg-PARSE_FAST"
    assert batch.results is None
    done = wait(c, batch.id)
    assert done.status == "COMPLETED"
    full = c.batches.get(batch.id, expand=["results"])
    assert len(full.results) == handoff["files"]
    assert all(r.error_message is None and r.job_reference.type == "parse_v2" for r in full.results)
    texts = [c.parsing.get(r.job_reference.id, expand=["text"]) for r in full.results]
    assert all(t.job.status == "COMPLETED" for t in texts)
    assert any("Total due: 126.00" in p.text for t in texts for p in t.text.pages)
    handoff["v2_batch_id"] = batch.id
    HANDOFF.write_text(json.dumps(handoff))

    deadline = time.time() + 30
    while {(p, json.loads(b)["event_type"]) for p, _, b in Hooks.received} < {
        ("/inline", "batch.pending"), ("/inline", "batch.running"), ("/inline", "batch.success"), ("/saved", "batch.success"),
    }:
        assert time.time() < deadline, Hooks.received
        time.sleep(0.1)
    for path, headers, body in Hooks.received:
        event = json.loads(body)
        assert event["data"]["id"] == batch.id and event["data"]["config"]["job"]["type"] == "parse_v2"
        assert event["data"]["status"] == {"batch.pending": "PENDING", "batch.running": "RUNNING", "batch.success": "COMPLETED"}[event["event_type"]]
        if path == "/inline":
            want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["lc-signature"] == want
        else:
            assert "lc-signature" not in headers


def test_the_other_lines_batch_reads_as_v2(handoff):
    c = client()
    legacy = c.batches.get(handoff["legacy_batch_id"], expand=["results"])
    assert legacy.status == "COMPLETED" and legacy.config.job.configuration_id == "inline"
    assert legacy.source_directory_id == handoff["directory_id"]
    assert len(legacy.results) == handoff["files"]
    with pytest.raises(NotFoundError) as e:
        c.batches.get(handoff["classify_batch_id"])
    assert "/api/v1/beta/batch-processing/" in e.value.body["detail"]


def test_configurations_shape_the_job():
    c = client()
    made = c.configurations.create(name="first-page", parameters={
        "product_type": "parse_v2", "tier": "fast", "version": "latest",
        "page_ranges": {"target_pages": "2"},
    })
    again = c.configurations.create(name="first-page", parameters={
        "product_type": "parse_v2", "tier": "fast", "version": "latest",
        "page_ranges": {"target_pages": "1"},
    })
    assert again.id == made.id and again.parameters.page_ranges.target_pages == "1"
    renamed = c.configurations.update(made.id, name="page-one")
    assert renamed.name == "page-one"
    assert [x.id for x in c.configurations.list(product_type=["parse_v2"])] == [made.id]
    assert c.configurations.retrieve("cfg-PARSE_FAST").parameters.tier == "fast"

    d = c.beta.directories.create(name="v2-config")
    with open(SAMPLES / "invoice-1042.pdf", "rb") as fh:
        c.beta.directories.files.upload(d.id, upload_file=("invoice-1042.pdf", fh.read()))
    b = c.batches.create(source_directory_id=d.id, config={"job": {"type": "parse_v2", "configuration_id": made.id}})
    assert wait(c, b.id).status == "COMPLETED"
    (r,) = c.batches.get(b.id, expand=["results"]).results
    pages = c.parsing.get(r.job_reference.id, expand=["text"]).text.pages
    assert [p.page_number for p in pages] == [1]

    with pytest.raises(UnprocessableEntityError) as e:
        c.configurations.create(name="smart", parameters={"product_type": "parse_v2", "tier": "agentic", "version": "latest"})
    assert e.value.body["detail"].startswith("parameters.tier:")
    with pytest.raises(UnprocessableEntityError) as e:
        c.batches.create(source_directory_id=d.id, config={"job": {"type": "extract_v2", "configuration_id": made.id}})
    assert e.value.body["detail"].startswith("config.job.type:")
    with pytest.raises(UnprocessableEntityError) as e:
        c.batches.create(source_directory_id=d.id, config={"job": {"type": "parse_v2", "configuration_id": "cfg-PARSE_AGENTIC"}})
    assert e.value.body["detail"].startswith("config.job.configuration_id:")
    with pytest.raises(UnprocessableEntityError) as e:
        c.batches.create(source_directory_id="dir-nope", config={"job": {"type": "parse_v2", "configuration_id": made.id}})
    assert e.value.body["detail"].startswith("source_directory_id:")

    c.configurations.delete(made.id)
    with pytest.raises(NotFoundError):
        c.configurations.retrieve(made.id)
    # The batch keeps the job it was created with.
    assert c.batches.get(b.id).config.job.configuration_id == made.id


def test_saved_webhook_configurations():
    c = client()
    w = c.webhook_configs.create(webhook_url="https://hooks.example.com/a", webhook_signing_secret="s3cret",
                                 webhook_headers={"X-Token": "t"})
    assert w.has_secret and w.tenant_type == "project"
    assert "s3cret" not in json.dumps(c.webhook_configs.retrieve(w.id).model_dump(mode="json"))
    u = c.webhook_configs.update(w.id, webhook_events=["parse.success"])
    assert u.webhook_events == ["parse.success"] and u.has_secret
    with pytest.warns(DeprecationWarning):
        assert any(x.id == w.id for x in c.webhook_configs.list())
    assert any(x.id == w.id for x in c.webhook_configs.list_paginated(page_size=1))
    with pytest.raises(UnprocessableEntityError) as e:
        c.webhook_configs.create(webhook_url="https://hooks.example.com/b", webhook_events=[])
    assert "webhook_events" in e.value.body["detail"]
    c.webhook_configs.delete(w.id)
    with pytest.raises(NotFoundError):
        c.webhook_configs.retrieve(w.id)


def test_files_and_directories():
    c = client()
    raw = (SAMPLES / "meeting-minutes.txt").read_bytes()
    f = c.files.create(file=("minutes.txt", raw), purpose="parse", external_file_id="ext-1")
    assert f.name == "minutes.txt" and f.purpose == "parse" and f.file_type == "txt"
    assert c.files.retrieve(f.id).external_file_id == "ext-1"
    assert [x.id for x in c.files.list(file_name="minutes.txt")] == [f.id]
    url = c.files.content(f.id, expires_at_seconds=60)
    with urllib.request.urlopen(url.url) as resp:
        assert resp.read() == raw
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url.url.replace("signature=", "signature=00"))

    d = c.beta.directories.create(name="v2-files")
    d = c.beta.directories.update(d.id, name="v2-files-renamed", description="added, not uploaded")
    assert d.name == "v2-files-renamed"
    added = c.beta.directories.files.add(d.id, file_id=f.id, metadata={"team": "ops"})
    assert added.file_id == f.id and added.unique_id == "ext-1"
    got = c.beta.directories.files.get(added.id, directory_id=d.id)
    assert got.display_name == "minutes.txt"
    moved_to = c.beta.directories.create(name="v2-files-target")
    moved = c.beta.directories.files.update(added.id, directory_id=d.id, display_name="renamed.txt",
                                            target_directory_id=moved_to.id)
    assert moved.directory_id == moved_to.id and moved.display_name == "renamed.txt"
    assert list(c.beta.directories.files.list(d.id)) == []
    b = c.batches.create(source_directory_id=moved_to.id, config={"job": {"type": "parse_v2", "configuration_id": "cfg-PARSE_FAST"}})
    assert wait(c, b.id).status == "COMPLETED"

    # An added file outlives its directory; an uploaded one goes with it.
    with open(SAMPLES / "release-notes.md", "rb") as fh:
        up = c.beta.directories.files.upload(moved_to.id, upload_file=("release-notes.md", fh.read()))
    c.beta.directories.delete(moved_to.id)
    assert c.files.retrieve(f.id).id == f.id
    with pytest.raises(NotFoundError):
        c.files.retrieve(up.file_id)
    c.files.delete(f.id)
    with pytest.raises(NotFoundError):
        c.files.retrieve(f.id)
    with pytest.raises(NotFoundError):
        c.beta.directories.get("dir-x:files")


def test_list_and_cancel(handoff):
    c = client()
    d = c.beta.directories.create(name="v2-cancel")
    for name in ["invoice-1042.pdf", "jane-doe-cv.pdf"]:
        with open(SAMPLES / name, "rb") as fh:
            c.beta.directories.files.upload(d.id, upload_file=(name, fh.read()))
    b = c.batches.create(source_directory_id=d.id, config={"job": {"type": "parse_v2", "configuration_id": "cfg-PARSE_FAST"}})
    cancelled = c.batches.cancel(b.id)
    assert cancelled.id == b.id and cancelled.status == "CANCELLED"
    with pytest.raises(BadRequestError):
        c.batches.cancel(handoff["v2_batch_id"])
    mine = list(c.batches.list(source_directory_id=d.id))
    assert [x.id for x in mine] == [b.id]
    assert [x.id for x in c.batches.list(source_directory_id=d.id, status="CANCELLED")] == [b.id]
    assert list(c.batches.list(source_directory_id=d.id, status="COMPLETED")) == []
    every = [x.id for x in c.batches.list(page_size=1)]
    assert len(every) == len(set(every)) and {b.id, handoff["v2_batch_id"]} <= set(every)
    assert list(c.batches.list(created_at_on_or_after="2100-01-01T00:00:00Z")) == []
    with pytest.raises(UnprocessableEntityError):
        c.batches.list(status="DONE").items


RULES = [
    {"type": "invoice", "description": "A bill requesting payment with line items, VAT and a total due"},
    {"type": "minutes", "description": "Meeting minutes with attendees, decisions and action items"},
]


def test_single_file_jobs():
    c = client()
    with open(SAMPLES / "invoice-1042.pdf", "rb") as fh:
        raw = fh.read()
    # The SDK's create-and-wait helper, on an upload.
    done = c.parsing.parse(tier="fast", version="latest", upload_file=("invoice-1042.pdf", raw),
                           page_ranges={"target_pages": "2"}, expand=["text"], polling_interval=0.1)
    assert done.job.status == "COMPLETED" and [p.page_number for p in done.text.pages] == [2]
    assert "Total due: 126.00" in done.text.pages[0].text
    # By file id, then waited for.
    f = c.files.create(file=("minutes.txt", (SAMPLES / "meeting-minutes.txt").read_bytes()), purpose="parse")
    job = c.parsing.create(tier="fast", version="latest", file_id=f.id, user_metadata={"ticket": "42"})
    assert job.status == "PENDING" and job.name == "minutes.txt"
    c.parsing.wait_for_completion(job.id, polling_interval=0.1)
    got = c.parsing.get(job.id, expand=["markdown"])
    assert got.job.user_metadata == {"ticket": "42"} and got.markdown.pages[0].success
    listed = [j.id for j in c.parsing.list()]
    assert listed[:2] == [job.id, done.job.id]
    assert [j.id for j in c.parsing.list(job_ids=[job.id], status="COMPLETED")] == [job.id]
    with pytest.raises(UnprocessableEntityError) as e:
        c.parsing.create(tier="agentic", version="latest", file_id=f.id)
    assert e.value.body["detail"].startswith("tier:")
    with pytest.raises(UnprocessableEntityError) as e:
        c.parsing.create(tier="fast", version="latest", source_url="http://169.254.169.254/")
    assert e.value.body["detail"].startswith("source_url:")

    # Classify a file, and the file a parse job read.
    r = c.classify.run(file_input=f.id, configuration={"rules": RULES}, polling_interval=0.1)
    assert r.status == "COMPLETED" and r.result.type == "minutes" and r.file_input == f.id
    by_parse = c.classify.run(file_input=done.job.id, configuration={"rules": RULES}, polling_interval=0.1)
    assert by_parse.result.type == "invoice" and by_parse.document_input_type == "parse_job_id"
    saved = c.configurations.create(name="doc-types", parameters={"product_type": "classify_v2", "rules": RULES})
    j = c.classify.create(file_input=f.id, configuration_id=saved.id)
    assert j.configuration_id == saved.id and j.configuration.rules[0].type == "invoice"
    # A job a worker had already started finishes, and keeps its result.
    cancelled = c.classify.cancel(j.id)
    assert cancelled.status in ("CANCELLED", "RUNNING", "COMPLETED")
    deadline = time.time() + 30
    while c.classify.get(j.id).status in ("PENDING", "RUNNING"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert c.classify.get(j.id).status in ("CANCELLED", "COMPLETED")
    assert {x.id for x in c.classify.list()} >= {r.id, by_parse.id, j.id}
    assert [x.id for x in c.classify.list(configuration_id=saved.id)] == [j.id]
    with pytest.raises(BadRequestError):
        c.parsing.cancel(job.id)

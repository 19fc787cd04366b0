"""The batch flow through the official llama-cloud SDK (2.13.0), strict validation on.

Run by tests/tests/sdk.rs, which starts a fleet and passes DOCFLEET_API_URL, DOCFLEET_API_KEY,
DOCFLEET_OTHER_KEY (a key of another project), DOCFLEET_SAMPLES, and DOCFLEET_HANDOFF: a JSON
file where this run leaves the directory and batches it made, for the 2.19.0 run that follows.
"""
import json
import os
import pathlib
import time

import pytest
from llama_cloud import LlamaCloud, AuthenticationError, BadRequestError, NotFoundError, UnprocessableEntityError

BASE = os.environ["DOCFLEET_API_URL"]
KEY = os.environ["DOCFLEET_API_KEY"]
SAMPLES = pathlib.Path(os.environ["DOCFLEET_SAMPLES"])


def hand_off(**facts):
    path = pathlib.Path(os.environ["DOCFLEET_HANDOFF"])
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**known, **facts}))


def client(key=KEY):
    return LlamaCloud(api_key=key, base_url=BASE, _strict_response_validation=True, max_retries=0)


def wait(c, job_id, timeout=60):
    deadline = time.time() + timeout
    last = 0.0
    while True:
        st = c.beta.batch.get_status(job_id)
        assert st.progress_percentage >= last
        last = st.progress_percentage
        if st.job.status in ("completed", "failed", "cancelled"):
            return st
        assert time.time() < deadline, st
        time.sleep(0.1)


@pytest.fixture(scope="module")
def directory():
    c = client()
    d = c.beta.directories.create(name="sdk-samples", type="user")
    files = []
    for name in ["invoice-1042.pdf", "jane-doe-cv.pdf", "meeting-minutes.txt", "release-notes.md"]:
        with open(SAMPLES / name, "rb") as fh:
            files.append(c.beta.directories.files.upload(d.id, upload_file=(name, fh.read()), metadata='{"source": "sdk"}'))
    return d, files


def test_directories_and_files(directory):
    c = client()
    d, files = directory
    assert c.beta.directories.get(d.id).name == "sdk-samples"
    assert any(x.id == d.id for x in c.beta.directories.list())
    listed = list(c.beta.directories.files.list(d.id, page_size=2))
    assert [f.id for f in listed] == [f.id for f in files]
    assert listed[0].display_name == "invoice-1042.pdf"


def test_parse_batch_from_directory(directory):
    c = client()
    d, files = directory
    job = c.beta.batch.create(
        directory_id=d.id,
        page_size=2,
        job_config={"job_name": "parse_raw_file_job", "parameters": {"type": "parse", "priority": "high"}},
    )
    assert job.status == "pending" and job.job_type == "parse"
    st = wait(c, job.id)
    assert st.job.status == "completed"
    assert st.job.processed_items == st.job.total_items == 4
    assert st.progress_percentage == 100
    items = list(c.beta.batch.job_items.list(job.id, limit=3))
    assert len(items) == 4 and all(i.status == "completed" for i in items)
    invoice = next(i for i in items if i.item_name == "invoice-1042.pdf")
    result = c.parsing.get(invoice.job_id, expand=["text", "markdown", "items", "metadata"])
    assert result.job.status == "COMPLETED"
    assert "Total due: 126.00" in result.text.pages[1].text
    assert result.markdown.pages[0].success
    assert result.items.pages[0].page_width > 0
    md_item = next(i for i in items if i.item_name == "release-notes.md")
    md = c.parsing.get(md_item.job_id, expand=["items"])
    assert md.items.pages[0].items[0].type == "heading"
    runs = c.beta.batch.job_items.get_processing_results(invoice.item_id, job_type="parse")
    assert runs.processing_results[0].result_id == invoice.job_id
    listed = list(c.beta.batch.list(job_type="parse", status="completed"))
    assert any(b.id == job.id for b in listed)
    hand_off(directory_id=d.id, files=len(files), legacy_batch_id=job.id)


def test_classify_batch_from_item_ids(directory):
    c = client()
    _, files = directory
    job = c.beta.batch.create(
        item_ids=[f.id for f in files[:3]],
        job_config={
            "id": "unused", "project_id": "unused", "user_id": "unused", "status": "PENDING",
            "mode": "FAST",
            "rules": [
                {"type": "invoice", "description": "A bill requesting payment with line items, VAT and a total due"},
                {"type": "resume", "description": "A CV: a person's work experience, education and skills"},
                {"type": "minutes", "description": "Meeting minutes with attendees, decisions and action items"},
            ],
            "parsing_configuration": {"lang": "en", "max_pages": 2, "target_pages": [0, 1]},
        },
    )
    st = wait(c, job.id)
    assert st.job.status == "completed"
    want = {"invoice-1042.pdf": "invoice", "jane-doe-cv.pdf": "resume", "meeting-minutes.txt": "minutes"}
    for item in c.beta.batch.job_items.list(job.id):
        r = c.classify.get(item.job_id)
        assert r.status == "COMPLETED", r.error_message
        assert r.result.type == want[item.item_name], r.result
        assert 0 <= r.result.confidence <= 1 and r.result.reasoning
        assert r.configuration.parsing_configuration.target_pages == "1,2"
    hand_off(classify_batch_id=job.id)


def test_files_added_to_a_directory():
    """files.create, then directories.files.add: the two-step way in."""
    c = client()
    raw = (SAMPLES / "release-notes.md").read_bytes()
    f = c.files.create(file=("notes.md", raw), purpose="parse")
    d = c.beta.directories.create(name="sdk-added")
    added = c.beta.directories.files.add(d.id, file_id=f.id, unique_id="notes")
    assert added.file_id == f.id and added.display_name == "notes.md"
    assert c.beta.directories.files.get(added.id, directory_id=d.id).unique_id == "notes"
    renamed = c.beta.directories.files.update(added.id, directory_id=d.id, display_name="notes-v2.md")
    assert renamed.display_name == "notes-v2.md"
    assert c.beta.directories.update(d.id, description="two steps").description == "two steps"
    assert [x.id for x in c.files.list()][0] == f.id
    url = c.files.get(f.id)
    assert url.url.startswith("http") and url.expires_at
    job = c.beta.batch.create(directory_id=d.id, job_config={"parameters": {}})
    st = wait(c, job.id)
    assert st.job.status == "completed" and st.job.processed_items == 1
    (item,) = c.beta.batch.job_items.list(job.id)
    assert c.parsing.get(item.job_id, expand=["markdown"]).markdown.pages[0].success
    c.beta.directories.files.delete(added.id, directory_id=d.id)
    c.files.delete(f.id)
    with pytest.raises(NotFoundError):
        c.files.delete(f.id)


def test_cancel_and_errors(directory):
    c = client()
    d, files = directory
    job = c.beta.batch.create(item_ids=[files[0].id], job_config={"parameters": {}})
    st = wait(c, job.id)
    with pytest.raises(BadRequestError):
        c.beta.batch.cancel(job.id)
    with pytest.raises(UnprocessableEntityError) as e:
        c.beta.batch.create(directory_id=d.id, job_config={"rules": []})
    assert "rules" in str(e.value.body["detail"])
    with pytest.raises(BadRequestError):
        c.beta.batch.create(directory_id=d.id, item_ids=[files[0].id], job_config={"parameters": {}})
    with pytest.raises(NotFoundError):
        c.beta.batch.get_status("bjb-00000000-0000-0000-0000-000000000000")
    with pytest.raises(AuthenticationError):
        client("dfk_not_a_key").beta.batch.list()
    other = client(os.environ["DOCFLEET_OTHER_KEY"])
    with pytest.raises(NotFoundError):
        other.beta.batch.get_status(job.id)
    assert st.job.status == "completed"


def test_cancel_pending_batch(directory):
    """Cancel right after create: whatever had not started becomes cancelled."""
    c = client()
    d, _ = directory
    job = c.beta.batch.create(directory_id=d.id, job_config={"parameters": {}})
    res = c.beta.batch.cancel(job.id, reason="test")
    assert res.status == "cancelled" and res.job_id == job.id
    st = wait(c, job.id)
    assert st.job.status == "cancelled"

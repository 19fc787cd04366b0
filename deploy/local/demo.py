"""Sample batch, end to end, through the official llama-cloud SDK (2.13.0).

Uploads deploy/samples into a directory, parses every file, classifies them, and prints
progress and results. Reads DOCFLEET_API_URL and DOCFLEET_API_KEY (deploy/local/fleet up).
"""
import os
import pathlib
import sys
import time

from llama_cloud import LlamaCloud


def wait(client, job_id):
    while True:
        st = client.beta.batch.get_status(job_id)
        j = st.job
        print(f"  {j.status:<10} {j.processed_items}/{j.total_items} items "
              f"({st.progress_percentage:.0f}%), {j.failed_items} failed", flush=True)
        if j.status in ("completed", "failed", "cancelled"):
            return st
        time.sleep(0.3)


def main(samples: pathlib.Path) -> int:
    client = LlamaCloud(api_key=os.environ["DOCFLEET_API_KEY"], base_url=os.environ["DOCFLEET_API_URL"],
                        _strict_response_validation=True)
    directory = client.beta.directories.create(name=f"samples-{int(time.time())}", type="user")
    print(f"Directory {directory.id}")
    for path in sorted(samples.iterdir()):
        if path.suffix in (".py",):
            continue
        f = client.beta.directories.files.upload(directory.id, upload_file=(path.name, path.read_bytes()))
        print(f"  uploaded {path.name} as {f.id}")

    print("\nParse batch")
    batch = client.beta.batch.create(directory_id=directory.id,
                                     job_config={"job_name": "parse_raw_file_job", "parameters": {"type": "parse"}})
    st = wait(client, batch.id)
    for item in client.beta.batch.job_items.list(batch.id):
        if item.status != "completed":
            print(f"  {item.item_name}: {item.status} {item.error_message or ''}")
            continue
        result = client.parsing.get(item.job_id, expand=["text"])
        first = result.text.pages[0].text.strip().splitlines()[0] if result.text.pages[0].text.strip() else ""
        print(f"  {item.item_name}: {len(result.text.pages)} page(s), starts {first[:60]!r}")

    print("\nClassify batch")
    rules = [
        {"type": "invoice", "description": "A bill requesting payment, with line items, amounts and a total due"},
        {"type": "resume", "description": "A CV describing a person's work experience, education and skills"},
        {"type": "meeting_notes", "description": "Minutes of a meeting: attendees, decisions and action items"},
        {"type": "release_notes", "description": "Notes describing what changed in a software release and how to upgrade"},
        {"type": "price_list", "description": "A table of parts or products with their unit prices"},
    ]
    batch = client.beta.batch.create(directory_id=directory.id, job_config={"rules": rules, "mode": "FAST"})
    wait(client, batch.id)
    for item in client.beta.batch.job_items.list(batch.id):
        r = client.classify.get(item.job_id)
        if r.result is None:
            print(f"  {item.item_name}: {r.status} {r.error_message or ''}")
            continue
        print(f"  {item.item_name}: {r.result.type} (confidence {r.result.confidence:.2f})")
        print(f"      {r.result.reasoning}")
    return 0 if st.job.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))

"""Idempotent submissions (``Idempotency-Key``): the same key and body answer the first job again,
another body is 422, a duplicate while the first is admitted is 409; keys are per caller, refused
admissions free them, and ``zoomq submit --idempotency-key`` does the same from the command line.
On the private redis-server, through the real app: no worker is needed to see ids and job counts."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

from support.cli import run_cli
from zoomq.producer import idempotency
from zoomq.web import api_keys, submission

IMAGE = {"kind": "image", "model": "t2i", "prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}
IMAGE_REORDERED = {"height": 64, "width": 64, "steps": 2, "prompt": "a lighthouse", "model": "t2i", "kind": "image"}


def jobs(client) -> int:
    return client.producer.redis.zcard("zoomq:jobs")


def post(client, body=None, key=None, **kwargs):
    headers = {**kwargs.pop("headers", {}), **({"Idempotency-Key": key} if key is not None else {})}
    return client.post("/api/jobs", json=body if body is not None else IMAGE, headers=headers, **kwargs)


def test_the_same_key_and_body_answer_the_first_job_again(client):
    first = post(client, key="order-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = post(client, IMAGE_REORDERED, key='"order-1"')  # the draft's quoted form; keys in another order
    assert again.status_code == 202 and again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"] and again.headers["Idempotent-Replayed"] == "true"
    assert jobs(client) == 1
    assert post(client).status_code == 202 and post(client).status_code == 202  # no key: a job each
    assert jobs(client) == 3
    name = idempotency.redis_key(f"addr:{'127.0.0.1'}", "order-1")
    assert 24 * 3600 - 60 < client.producer.redis.ttl(name) <= 24 * 3600
    stored = {k: client.producer.redis.get(k) for k in client.producer.redis.scan_iter("zoomq:idempotency:*")}
    assert list(stored) == [name.encode()] and not any(b"order-1" in v for v in stored.values())  # hashed


def test_the_same_key_with_another_body_is_422_and_enqueues_nothing(client):
    first = post(client, key="k")
    other = post(client, {**IMAGE, "prompt": "a windmill"}, key="k")
    assert other.status_code == 422
    assert "Idempotency-Key" in other.get_json()["error"] and "new key" in other.get_json()["error"]
    assert jobs(client) == 1
    assert post(client, key="k").get_json()["id"] == first.get_json()["id"]  # the key still answers its job


def test_a_duplicate_while_the_first_is_admitted_is_409_with_retry_after(client, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    enqueue = submission.enqueue

    def slow_enqueue(*args, **kwargs):  # the real enqueue, held open while the duplicate arrives
        entered.set()
        assert release.wait(30)
        return enqueue(*args, **kwargs)

    monkeypatch.setattr(submission, "enqueue", slow_enqueue)
    answers: dict = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", post(client, key="slow")))
    first.start()
    try:
        assert entered.wait(30)
        other = client.application.test_client()  # another connection, while the first is held
        duplicate = post(other, key="slow")
        assert duplicate.status_code == 409 and int(duplicate.headers["Retry-After"]) >= 1
        assert "still being admitted" in duplicate.get_json()["error"]
        assert post(other, {**IMAGE, "prompt": "other"}, key="slow").status_code == 422  # another body: as ever
    finally:
        release.set()
        first.join(30)
    assert answers["first"].status_code == 202
    monkeypatch.setattr(submission, "enqueue", enqueue)
    assert post(client, key="slow").get_json()["id"] == answers["first"].get_json()["id"]  # now its job
    assert jobs(client) == 1


def test_a_refused_admission_frees_the_key(make_client):
    client = make_client(max_queued_per_key=1)
    assert post(client, {**IMAGE, "steps": "many"}, key="retry").status_code == 400
    first = post(client, key="retry")  # the key was freed: the same request under it is admitted
    assert first.status_code == 202
    full = post(client, {**IMAGE, "prompt": "second"}, key="second")
    assert full.status_code == 429 and jobs(client) == 1
    client.delete(f"/api/jobs/{first.get_json()['id']}")
    second = post(client, {**IMAGE, "prompt": "second"}, key="second")  # freed after the 429 too
    assert second.status_code == 202 and jobs(client) == 2


def test_keys_are_scoped_per_api_key_and_per_address(make_client, tmp_path):
    made = {name: api_keys.new_key() for name in ("alice", "bob")}
    path = tmp_path / "keys"
    path.write_text("".join(api_keys.line(name, key, admin=False) + "\n" for name, key in made.items()))
    client = make_client(api_keys_file=str(path))
    alice, bob = ({"Authorization": f"Bearer {made[n]}"} for n in ("alice", "bob"))
    a = post(client, key="shared", headers=alice).get_json()["id"]
    b = post(client, key="shared", headers=bob).get_json()["id"]
    assert a != b and jobs(client) == 2  # bob's key never reaches alice's job
    assert client.get(f"/api/jobs/{a}", headers=bob).status_code == 404
    assert post(client, key="shared", headers=alice).get_json()["id"] == a
    assert post(client, key="shared").status_code == 401  # no key, no answer from anyone's
    anonymous = make_client()
    here = post(anonymous, key="x").get_json()["id"]
    there = post(anonymous, key="x", environ_base={"REMOTE_ADDR": "10.9.9.9"}).get_json()["id"]
    assert here != there


@pytest.mark.parametrize("value", ["", '""', "x" * 256, "caf\u00e9", "tab\there", '"unterminated\\"', '"a"b"'])
def test_a_malformed_key_is_400_naming_the_header(client, value):
    answer = post(client, key=value)
    assert answer.status_code == 400
    assert [e["field"] for e in answer.get_json()["errors"]] == ["Idempotency-Key"]
    assert jobs(client) == 0


def test_the_longest_key_and_a_dry_run(client):
    assert post(client, key="x" * 255).status_code == 202
    dry = client.post("/api/jobs?dry_run=1", json=IMAGE, headers={"Idempotency-Key": "dry"})
    assert dry.status_code == 200 and dry.get_json()["dry_run"] is True
    assert post(client, {**IMAGE, "prompt": "real"}, key="dry").status_code == 202  # the dry run held no key
    assert jobs(client) == 2


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_form_submissions_are_fingerprinted_with_their_uploads(client):
    def form(color: str):
        data = {"kind": "image", "model": "inpaint", "prompt": "a door", "steps": "2",
                "init_image": (io.BytesIO(_png(color)), "init.png"), "mask": (io.BytesIO(_png("white")), "m.png")}
        return client.post("/api/jobs", data=data, content_type="multipart/form-data",
                           headers={"Idempotency-Key": "form"})

    first = form("red")
    assert first.status_code == 202, first.get_json()
    assert form("red").get_json()["id"] == first.get_json()["id"]
    assert form("blue").status_code == 422  # the same fields, another image
    assert jobs(client) == 1
    assert client.producer.artifact(first.get_json()["id"], "init.png") is not None  # the upload was read whole


def test_zoomq_submit_idempotency_key(client, capsys):
    args = ["submit", "image", "a lighthouse", "--model", "t2i", "--steps", "2", "--size", "64"]
    code, out, err = run_cli(*args, "--idempotency-key", "cli-1", capsys=capsys)
    assert code == 0, err
    job_id = out.strip()
    code, out, err = run_cli(*args, "--idempotency-key", "cli-1", capsys=capsys)
    assert code == 0 and out.strip() == job_id, err
    code, out, err = run_cli(*[a if a != "2" else "3" for a in args], "--idempotency-key", "cli-1", capsys=capsys)
    assert code == 2 and "--idempotency-key" in err and "new key" in err
    code, out, err = run_cli(*args, "--idempotency-key", "x" * 256, capsys=capsys)
    assert code == 2 and "--idempotency-key" in err
    assert jobs(client) == 1
    web = post(client, key="cli-1")  # the command line's keys are its own: a web caller's never meet them
    assert web.status_code == 202 and web.get_json()["id"] != job_id

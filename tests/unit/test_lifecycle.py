"""Pure decisions: backoff, poll schedule, what a job status means."""

from hypothesis import given
from hypothesis import strategies as st

from agent import lifecycle
from agent.lifecycle import JobOutcome
from agent.models import JobMessage, RemoteInput, RemoteJob


def job(code: str, errors: tuple[JobMessage, ...] = ()) -> RemoteJob:
    return RemoteJob(id="j1", status_code=code, errors=errors)


def test_only_completed_failed_canceled_are_terminal() -> None:
    assert lifecycle.job_outcome(job("completed")) is JobOutcome.COMPLETED
    assert lifecycle.job_outcome(job("failed")) is JobOutcome.FAILED
    assert lifecycle.job_outcome(job("canceled")) is JobOutcome.CANCELED
    for code in ("", "incomplete", "queued", "processing", "something_new", "invalid"):
        assert lifecycle.job_outcome(job(code)) is JobOutcome.RUNNING


def test_started_means_past_staging() -> None:
    assert not lifecycle.started(job("incomplete"))
    assert not lifecycle.started(job(""))
    assert lifecycle.started(job("queued"))
    assert lifecycle.started(job("completed"))


def test_retry_after_is_honoured_exactly_and_capped() -> None:
    assert lifecycle.retry_delay(1, 7.0, 0.9) == 7.0
    assert lifecycle.retry_delay(1, 99999.0, 0.0) == lifecycle.MAX_RETRY_AFTER
    assert lifecycle.retry_delay(1, 0.0, 0.0) == 2.0  # 0 falls back to the backoff


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.999))
def test_backoff_grows_and_stays_bounded(attempts: int, rand: float) -> None:
    d = lifecycle.retry_delay(attempts, None, rand)
    assert 1.0 <= d <= lifecycle.MAX_WAIT
    assert lifecycle.retry_delay(attempts + 1, None, 0.0) >= lifecycle.retry_delay(
        attempts, None, 0.0
    )


def test_poll_schedule_follows_the_sdk_and_caps() -> None:
    delays = [lifecycle.poll_delay(n, 1.0, 5.0, 0.0) for n in range(8)]
    assert delays[:4] == [1.0, 1.5, 2.25, 3.375]
    assert delays[-1] == 5.0
    assert lifecycle.poll_delay(3, 1.0, 5.0, 0.999) <= 5.0 * 1.25


def test_failure_message_quotes_the_server_and_says_what_to_do() -> None:
    msg = lifecycle.job_failure_message(
        job("failed", (JobMessage("conversion", 6005, "Unsupported input"),))
    )
    assert "Unsupported input (code 6005)" in msg
    assert "retry" in msg


def test_a_failure_about_the_target_or_category_points_at_them() -> None:
    for text in ("Unknown conversion target 'x'", "The category audio does not fit this input"):
        msg = lifecycle.job_failure_message(job("failed", (JobMessage("conversion", 6005, text),)))
        assert f"{text} (code 6005)" in msg
        assert "`target` and `category`" in msg and "GET /v2/conversions" in msg, msg
        assert "Check the ticket's inputs" not in msg
    msg = lifecycle.job_failure_message(job("failed", (JobMessage("input", 6005, "Corrupt"),)))
    assert "Check the ticket's inputs (each one whole, of a kind the target takes" in msg, msg


def test_an_input_the_server_could_not_download_is_named_with_what_to_check() -> None:
    url = "https://intranet.example/report.pdf"
    gone = JobMessage("input", 404, "The file could not be downloaded.", id_source="i2")
    inputs = (
        RemoteInput("i1", "upload", "", "a.png", 3, "completed"),
        RemoteInput("i2", "remote", url, "report.pdf", None, "failed"),
    )
    failed = RemoteJob(id="j1", status_code="failed", errors=(gone,), inputs=inputs)
    msg = lifecycle.job_failure_message(failed)
    assert msg.startswith(f"the server could not download the input {url}: "), msg
    assert "The file could not be downloaded. (code 404)" in msg
    assert "opens from the internet (the API downloads it itself, not this computer)" in msg
    assert "rename the ticket back to .job" in msg
    # an error that names no input the job lists still says which kind of trouble it is
    unnamed = RemoteJob(id="j1", status_code="failed", errors=(JobMessage("input", 404, "x"),))
    assert lifecycle.job_failure_message(unnamed).startswith("the server could not download an")
    # a URL from the server is cut short in the words
    long_url = "https://h.example/" + "a" * 500
    inputs = (RemoteInput("i2", "remote", long_url, "", None, "failed"),)
    msg = lifecycle.job_failure_message(
        RemoteJob(id="j1", status_code="failed", errors=(gone,), inputs=inputs)
    )
    assert long_url[:199] + "…" in msg and long_url not in msg
    # a password in the URL is a secret: never in the sidecar's words
    secret_url = "https://reports:s3cr3t-pw@intranet.example/q.pdf"
    inputs = (RemoteInput("i2", "remote", secret_url, "", None, "failed"),)
    msg = lifecycle.job_failure_message(
        RemoteJob(id="j1", status_code="failed", errors=(gone,), inputs=inputs)
    )
    assert "s3cr3t-pw" not in msg and "https://reports:***@intranet.example/q.pdf" in msg
    # other input errors (a password needed, 401) are not taken for a link that does not open
    locked = JobMessage("input", 401, "A password is needed", id_source="i2")
    msg = lifecycle.job_failure_message(RemoteJob(id="j1", status_code="failed", errors=(locked,)))
    assert "could not download" not in msg and "A password is needed (code 401)" in msg


def test_output_problems_in_plain_words() -> None:
    assert lifecycle.output_problem("enabled") is None
    assert lifecycle.output_problem("") is None
    assert "24 hours" in (lifecycle.output_problem("expired") or "")
    assert "too many times" in (lifecycle.output_problem("overuse") or "")
    assert "deleted" in (lifecycle.output_problem("disabled") or "")


def test_lone_surrogates_from_the_server_become_storable_text() -> None:
    from agent.models import RemoteJob

    j = RemoteJob.from_dict(
        {"id": "a", "output": [{"id": "o", "filename": "x\ud800y.png", "uri": "http://h/\udfff"}]}
    )
    assert j.outputs[0].filename == "x?y.png"
    j.outputs[0].uri.encode("utf-8")  # would raise if a surrogate were left

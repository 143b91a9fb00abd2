"""The notifier (loop/notify/notifier.py) against a real HTTP receiver on 127.0.0.1 and a real event
log: delivery, a receiver that is down (one notify_degraded, back-off, notify_restored), a bounded
queue, and URL secrets that never reach an event or a log line."""
from __future__ import annotations

import json

import pytest

from loop.config import DaemonConfig, validate
from loop.config.sections import NotifyConfig
from loop.daemon.recovery import crashed_before
from loop.errors import ConfigError
from loop.journal.events import EventLog
from loop.notify.notifier import Notifier, clean_end, for_daemon
from loop.util.secrets import public_url, redact, url_secrets
from tests.conftest import wait_for

FAST = {"retry_seconds": 0.05, "max_retry_seconds": 0.2}



def disk_low(log: EventLog, free: float) -> None:
    log.append("disk_low", "disk-00001", free_gb=free, min_free_gb=2.0, path="/srv/ws")


def kinds(log: EventLog, kind: str) -> list[dict]:
    return [e for e in log if e["kind"] == kind]


def test_new_events_only_are_delivered_selected_ones_only(tmp_path, receiver):
    rx = receiver()
    log = EventLog(tmp_path / "events.jsonl")
    disk_low(log, 0.1)                                    # before the notifier: history, not news
    notifier = Notifier(NotifyConfig(events=["disk_low"], **FAST), [rx.url()], log, say=lambda _: None)
    log.append("llm_budget_spent", "c1", reason="LLM token budget spent: 10 of 10 tokens")   # not selected
    disk_low(log, 0.5)
    assert notifier.feed() == 1
    wait_for(lambda: len(rx.received) == 1, 30, "the disk_low notification")
    notifier.close()
    [msg] = rx.messages("disk_low")
    assert "0.5 GB free on /srv/ws" in msg["title"] and msg["type"] == "failure" and rx.received[0]["path"] == "/notify"
    assert notifier.feed() == 0 and len(rx.received) == 1          # each event once


def test_a_receiver_that_is_down_degrades_once_then_restores_and_delivers_in_order(tmp_path, receiver):
    rx = receiver(up=False)
    log, said = EventLog(tmp_path / "events.jsonl"), []
    notifier = Notifier(NotifyConfig(**FAST), [rx.url()], log, say=said.append)
    for free in (0.3, 0.2, 0.1):
        disk_low(log, free)
        notifier.feed()                                   # queues and returns: the send is the thread's
    wait_for(lambda: notifier.health.failures >= 4, 30, "several failed attempts")
    assert len(kinds(log, "notify_degraded")) == 1 and not rx.received
    degraded = kinds(log, "notify_degraded")[0]
    assert "Connection" in degraded["reason"] and degraded["targets"] == [rx.url()]
    rx.up()
    wait_for(lambda: len(rx.received) == 3, 30, "the queued notifications")
    wait_for(lambda: kinds(log, "notify_restored"), 30, "notify_restored")
    [restored] = kinds(log, "notify_restored")
    assert restored["failed_attempts"] >= 4 and restored["dropped"] == 0
    assert [m["body"]["title"].split(": ")[1] for m in rx.received] == [f"0.{i} GB free on /srv/ws" for i in (3, 2, 1)]
    assert len(kinds(log, "notify_degraded")) == 1
    assert any("degraded" in s for s in said) and any("restored" in s for s in said)
    notifier.close()


def test_the_queue_is_bounded_and_drops_the_oldest(tmp_path, receiver):
    rx = receiver(up=False)
    log = EventLog(tmp_path / "events.jsonl")
    notifier = Notifier(NotifyConfig(queue_size=2, **FAST), [rx.url()], log, say=lambda _: None)
    for i in range(6):
        disk_low(log, i / 10)
    notifier.feed()
    wait_for(lambda: kinds(log, "notify_degraded"), 30, "notify_degraded")
    assert len(notifier.queue) <= 2
    rx.up()
    wait_for(lambda: kinds(log, "notify_restored"), 30, "notify_restored")
    wait_for(lambda: not notifier.queue, 30, "an empty queue")
    titles = [m["body"]["title"] for m in rx.received]
    assert "0.5 GB" in titles[-1] and not any("0.0 GB" in t or "0.1 GB" in t for t in titles)
    assert kinds(log, "notify_restored")[0]["dropped"] >= 3
    notifier.close()


def test_a_stop_gives_up_within_its_flush_time_on_a_dead_receiver(tmp_path, receiver):
    rx = receiver(up=False)
    log, said = EventLog(tmp_path / "events.jsonl"), []
    notifier = Notifier(NotifyConfig(retry_seconds=3600, max_retry_seconds=3600), [rx.url()], log, say=said.append)
    disk_low(log, 0.1)
    notifier.close(flush_seconds=30)          # wakes the thread out of its hour-long back-off: one last try
    assert not notifier.thread.is_alive()
    assert any("1 not delivered at stop" in s for s in said)


def test_url_secrets_cover_passwords_path_tokens_and_secret_query_values():
    urls = {"json://user:pa55word99@127.0.0.1:8080/hooks/Xy7TokenPath42?token=qq11ww22ee": ["pa55word99",
                                                                                          "Xy7TokenPath42",
                                                                                          "qq11ww22ee"],
            "tgram://123456789:AAbbCCddEEff0011/555": ["123456789", "AAbbCCddEEff0011"],
            "discord://98765432100/WebhookTokenABCdef": ["98765432100", "WebhookTokenABCdef"],
            "form://127.0.0.1/x?-X-Api-Key=hdr5ecret%2Fz": ["hdr5ecret/z", "hdr5ecret%2Fz"]}
    for url, secrets in urls.items():
        found = url_secrets([url])
        assert set(secrets) <= set(found), (url, found)
        shown = public_url(url)
        assert not [s for s in secrets if s in shown], shown
        assert not [s for s in secrets if s in redact(f"posting to {url} failed", found)]
    assert "hooks" not in url_secrets(list(urls)) and "127.0.0.1" not in url_secrets(list(urls))


def test_a_token_never_reaches_the_event_log_or_the_log_lines(tmp_path, receiver):
    rx = receiver(up=False)
    token, password = "T0kenInThePath987", "hunter2pass"
    url = rx.url(f"hook/{token}", userinfo=f"bot:{password}")
    log, said = EventLog(tmp_path / "events.jsonl"), []
    notifier = Notifier(NotifyConfig(**FAST), [url], log, say=said.append)
    disk_low(log, 0.1)
    notifier.feed()
    wait_for(lambda: kinds(log, "notify_degraded"), 30, "notify_degraded")
    rx.up()
    wait_for(lambda: kinds(log, "notify_restored"), 30, "notify_restored")
    notifier.close()
    assert rx.received[0]["path"] == f"/hook/{token}"            # the receiver got the real URL ...
    written = (tmp_path / "events.jsonl").read_text() + "\n".join(said) + json.dumps(rx.received[0]["body"])
    assert token not in written and password not in written      # ... nothing else ever shows it


def test_the_daemons_notifier_reads_urls_from_config_and_environment(tmp_path, monkeypatch):
    def cfg(**notify) -> DaemonConfig:
        return validate(DaemonConfig, {"notify": notify}, "<test>")

    log = EventLog(tmp_path / "events.jsonl")
    monkeypatch.delenv("LLMLOOP_NOTIFY_URLS", raising=False)
    assert for_daemon(cfg(), log) is None                          # no URL: off
    monkeypatch.setenv("LLMLOOP_NOTIFY_URLS", "json://127.0.0.1:9/a, json://127.0.0.1:9/b")
    both = cfg(urls="json://127.0.0.1:9/c json://127.0.0.1:9/a")   # one string splits; each URL once
    assert both.notify.all_urls() == ["json://127.0.0.1:9/c", "json://127.0.0.1:9/a", "json://127.0.0.1:9/b"]
    notifier = for_daemon(both, log)
    assert notifier.shown == both.notify.all_urls()
    notifier.close()
    monkeypatch.setenv("LLMLOOP_NOTIFY_URLS", "json://127.0.0.1:9/a nosuch://s3cretTokenValue/x")
    with pytest.raises(ConfigError) as err:
        for_daemon(cfg(), log)
    assert "LLMLOOP_NOTIFY_URLS (item 2)" in str(err.value) and "nosuch://" in str(err.value)
    assert "s3cretTokenValue" not in str(err.value)
    with pytest.raises(ConfigError, match=r"notify\.events\.0"):
        cfg(events=["new_bestt"])


def test_a_start_after_a_crash_is_one_whose_last_start_has_no_stop(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    assert not crashed_before(log)
    log.append("daemon_start", "s1")
    log.append("cycle", "c1")
    assert crashed_before(log)
    log.append("daemon_stop", "x")
    assert not crashed_before(log)
    log.append("daemon_start", "s2")             # far back: found past the end of the log it reads first
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.writelines(f'{{"kind": "cycle", "cycle_trace_id": "c{i}"}}\n' for i in range(5000))
    assert crashed_before(log)


def test_clean_end_stops_before_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    assert clean_end(path) == 0
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"torn')
    assert clean_end(path) == len(b'{"a": 1}\n{"b": 2}\n')
    path.write_bytes(b'{"torn')
    assert clean_end(path) == 0


def test_the_dashboard_and_the_daemon_redact_the_urls_secrets(tmp_path, monkeypatch):
    """The pages and every redacted record (cycle events, tracking params) mask a URL's secret parts."""
    from loop.daemon.process import build_loop, workspace_of
    from loop.dashboard.views import collect_secrets

    monkeypatch.setenv("LLMLOOP_NOTIFY_URLS", "discord://98765432100/EnvWebhookToken42")
    cfg = validate(DaemonConfig, {"workspace": str(tmp_path / "ws"), "sandbox": "optional",
                                  "notify": {"urls": ["json://bot:Yaml5ecretPw@127.0.0.1:9/x"]}}, "<test>")
    for secrets in (collect_secrets(cfg, "dashboard-token-123"),
                    build_loop(cfg, workspace_of(cfg).ensure(), lambda: False, lambda *_: None).secrets):
        assert {"EnvWebhookToken42", "98765432100", "Yaml5ecretPw"} <= set(secrets)


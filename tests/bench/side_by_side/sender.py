#!/usr/bin/env python3
"""The load generator, run inside the bench's source container (stdlib only).

    sender.py smtp --target HOST:PORT --rcpts a,b,c --tag TAG --domain DOMAIN (--serial N | --rate R --seconds S) [--size B]
    sender.py sessions --proto pop3|imap --target HOST:PORT --users u:p,... --cafile F --concurrency C --seconds S

smtp: every message has its own token (Subject "<TAG> <token>", Message-ID <token@DOMAIN>);
recipients are taken in turn. --serial sends one message at a time (light load); --rate is an
open-loop sender: message i starts at i/R seconds whatever the server does. One JSON line per
message: {"token", "rcpt", "start", "accepted" (epoch seconds, after the 250 to the final dot)
or null, "error"}.
sessions: closed loop, C parallel clients; each session connects, STARTTLS, logs in, STAT
(POP3) or SELECT INBOX (IMAP), logs out. One JSON object: sessions, failures, seconds.
"""

import argparse
import concurrent.futures
import imaplib
import json
import poplib
import smtplib
import ssl
import sys
import threading
import time
import uuid

LINE = "La de da de da. The quick brown fox jumps over the lazy dog, as benchmarks go.\r\n"


def message(tag, domain, rcpt, size):
    token = uuid.uuid4().hex
    head = (f"From: <bench@example.net>\r\nTo: <{rcpt}>\r\nSubject: {tag} {token}\r\n"
            f"Message-ID: <{token}@{domain}>\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    body = LINE * max(1, (size - len(head)) // len(LINE))
    return token, (head + body).encode()


def send_one(host, port, tag, domain, rcpt, size):
    token, data = message(tag, domain, rcpt, size)
    record = {"token": token, "rcpt": rcpt, "start": time.time(), "accepted": None, "error": None}
    try:
        with smtplib.SMTP(host, port, local_hostname=domain, timeout=120) as smtp:
            smtp.sendmail("bench@example.net", [rcpt], data)
            record["accepted"] = time.time()
    except (OSError, smtplib.SMTPException) as error:
        record["error"] = str(error)[:200]
    return record


def smtp(args):
    host, port = args.target.rsplit(":", 1)
    rcpts = args.rcpts.split(",")
    lock = threading.Lock()

    def emit(record):
        with lock:
            print(json.dumps(record), flush=True)

    if args.serial:
        for i in range(args.serial):
            emit(send_one(host, int(port), args.tag, args.domain, rcpts[i % len(rcpts)], args.size))
            time.sleep(args.gap)
        return
    count = int(args.rate * args.seconds)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        start = time.time() + 0.2
        futures = []
        for i in range(count):
            delay = start + i / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send_one, host, int(port), args.tag, args.domain, rcpts[i % len(rcpts)], args.size))
            futures[-1].add_done_callback(lambda future: emit(future.result()))
        concurrent.futures.wait(futures)


def one_session(proto, host, port, user, password, context):
    if proto == "pop3":
        client = poplib.POP3(host, port, timeout=30)
        try:
            client.stls(context)
            client.user(user)
            client.pass_(password)
            client.stat()
        finally:
            client.quit()
    else:
        client = imaplib.IMAP4(host, port, timeout=30)
        try:
            client.starttls(ssl_context=context)
            client.login(user, password)
            client.select("INBOX", readonly=True)
        finally:
            client.logout()


def sessions(args):
    host, port = args.target.rsplit(":", 1)
    users = [item.split(":", 1) for item in args.users.split(",")]
    context = ssl.create_default_context(cafile=args.cafile)
    context.check_hostname = False
    counts = {"sessions": 0, "failures": 0, "errors": []}
    lock = threading.Lock()
    deadline = time.time() + args.seconds

    def worker(index):
        user, password = users[index % len(users)]
        while time.time() < deadline:
            try:
                one_session(args.proto, host, int(port), user, password, context)
                ok, error = True, None
            except Exception as exc:  # any protocol or TLS failure is a failed session
                ok, error = False, f"{type(exc).__name__}: {exc}"[:200]
                time.sleep(0.2)
            with lock:
                counts["sessions" if ok else "failures"] += 1
                if error and len(counts["errors"]) < 5:
                    counts["errors"].append(error)

    started = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["seconds"] = round(time.time() - started, 3)
    print(json.dumps(counts))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("smtp")
    p.add_argument("--target", required=True)
    p.add_argument("--rcpts", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--domain", required=True, help="Message-ID domain and HELO name")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--serial", type=int, default=0)
    p.add_argument("--gap", type=float, default=0.2)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=256)
    p = sub.add_parser("sessions")
    p.add_argument("--proto", choices=["pop3", "imap"], required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--users", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    smtp(args) if args.mode == "smtp" else sessions(args)


if __name__ == "__main__":
    sys.exit(main())

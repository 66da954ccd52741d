"""Steady load through the load balancer, as real clients make it: inbound SMTP on :25,
authenticated submission on :587 (STARTTLS), POP3 and IMAP logins.

Every message has its own token (X-Resilience-Token header, Subject, Message-ID). A refused
message (4xx, a connection that fails or drops) is tried again later, like an MTA would,
until the retry deadline; a 5xx is final and counted as a client-visible error.
"""

import heapq
import imaplib
import itertools
import poplib
import random
import smtplib
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

BODY = ("Hello,\r\n\r\nthe minutes of Tuesday's meeting are below. Please send corrections by Friday.\r\n\r\n"
        "1. Budget for the next quarter agreed.\r\n2. The office moves in spring.\r\n\r\nRegards\r\n")


def backoff(attempt, first=5.0, cap=60.0):
    """Seconds before the next try after `attempt` failed tries: 5, 10, 20, 40, 60, 60 ...
    (an MTA waits minutes; a run is short)."""
    return min(cap, first * 2 ** (attempt - 1))


def classify(error):
    """'refused' (4xx, retry later), 'rejected' (5xx, final) or 'connection' (retry later)."""
    code = getattr(error, "smtp_code", None)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code = min(c for c, _ in error.recipients.values())
    if code is None:
        return "connection"
    return "rejected" if 500 <= code < 600 else "refused"


class Message:
    """One message and every attempt to hand it over."""

    def __init__(self, runid, domain, kind, rcpt, sender, login=None):
        self.token = uuid.uuid4().hex
        self.kind, self.rcpt, self.sender, self.login = kind, rcpt, sender, login
        self.created = time.time()
        self.attempts = []  # {start, end, outcome, code, error, after_data}
        self.accepted = None
        self.state = "pending"  # pending, accepted, rejected, unsent
        self.text = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: resilience {runid} {kind} {self.token}\r\n"
                     f"Message-ID: <{self.token}@{domain}>\r\nX-Resilience-Token: {self.token}\r\n"
                     f"X-Resilience-Run: {runid}\r\n"
                     f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
                     "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + BODY).encode()

    def record(self):
        return {"token": self.token, "kind": self.kind, "rcpt": self.rcpt, "login": self.login,
                "created": self.created, "accepted": self.accepted, "state": self.state, "attempts": self.attempts}


class LoadGenerator:
    """An open-loop message source (--rate) feeding a worker pool, with a retry heap, and a
    read-session source (--read-rate)."""

    def __init__(self, lab, runid, recipients, logins, sender, rate, submission_share, read_rate, read_users,
                 workers=16, timeout=30):
        self.lab, self.runid = lab, runid
        self.domain = f"resilience-{runid}.example.net"
        self.recipients, self.logins, self.sender = recipients, logins, sender
        self.rate, self.submission_share, self.read_rate = rate, submission_share, read_rate
        self.read_users, self.timeout = read_users, timeout
        self.tls = lab.tls_context()
        self.mta_tls = ssl.create_default_context()
        self.mta_tls.check_hostname, self.mta_tls.verify_mode = False, ssl.CERT_NONE
        self.messages = []
        self.reads = []  # {start, end, proto, user, ok, error}
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.due = []  # heap of (due time, sequence, message)
        self.sequence = itertools.count()
        self.in_flight = 0
        self.sending = threading.Event()  # new messages are made while set
        self.stopped = threading.Event()
        self.retry_deadline = float("inf")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smtp")
        self.read_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="read")
        self.read_slots = threading.Semaphore(4)
        self.reads_skipped = 0
        self.threads = [threading.Thread(target=self._make_messages, daemon=True),
                        threading.Thread(target=self._dispatch, daemon=True),
                        threading.Thread(target=self._make_reads, daemon=True)]

    # --- control -------------------------------------------------------------------------
    def start(self):
        self.sending.set()
        for thread in self.threads:
            thread.start()

    def stop_sending(self, retry_until):
        """No new messages from now on; refused ones are still tried until retry_until."""
        self.sending.clear()
        with self.lock:
            self.retry_deadline = retry_until
            self.wakeup.notify_all()

    def pending(self):
        with self.lock:
            return len(self.due) + self.in_flight

    def stop(self):
        """Everything still waiting for a retry gives up (state 'unsent')."""
        self.sending.clear()
        self.stopped.set()
        with self.lock:
            for _, _, message in self.due:
                message.state = "unsent"
            self.due.clear()
            self.wakeup.notify_all()
        self.pool.shutdown(wait=True)
        self.read_pool.shutdown(wait=True)
        with self.lock:  # one the dispatcher took just as the pool closed
            for message in self.messages:
                if message.state == "pending":
                    message.state = "unsent"

    def counts(self):
        with self.lock:
            messages = list(self.messages)
            reads = list(self.reads)
        attempts = [a for m in messages for a in m.attempts]
        return {"sent": len(messages), "accepted": sum(1 for m in messages if m.accepted),
                "rejected": sum(1 for m in messages if m.state == "rejected"),
                "refused_attempts": sum(1 for a in attempts if a["outcome"] in ("refused", "connection")),
                "pending": len(self.due) + self.in_flight,
                "reads": len(reads), "read_errors": sum(1 for r in reads if not r["ok"]),
                "reads_skipped": self.reads_skipped}

    # --- messages ------------------------------------------------------------------------
    def _make_messages(self):
        """Message i is due at i/rate seconds after the start, whatever the platform does."""
        start, kinds = time.time(), random.Random(self.runid)
        recipients, logins = itertools.cycle(self.recipients), itertools.cycle(self.logins)
        for i in itertools.count():
            delay = start + i / self.rate - time.time()
            if delay > 0 and self.stopped.wait(delay):
                return
            if not self.sending.is_set():
                return
            if self.logins and kinds.random() < self.submission_share:
                login = next(logins)
                message = Message(self.runid, self.domain, "submission", next(recipients), login, login)
            else:
                message = Message(self.runid, self.domain, "inbound", next(recipients), self.sender)
            with self.lock:
                self.messages.append(message)
                heapq.heappush(self.due, (message.created, next(self.sequence), message))
                self.wakeup.notify_all()

    def _dispatch(self):
        while not self.stopped.is_set():
            with self.lock:
                now = time.time()
                if not self.due or self.due[0][0] > now:
                    self.wakeup.wait(timeout=min(1.0, self.due[0][0] - now) if self.due else 1.0)
                    continue
                _, _, message = heapq.heappop(self.due)
                self.in_flight += 1
            try:
                self.pool.submit(self._attempt, message)
            except RuntimeError:  # the pool shut down meanwhile
                return

    def _attempt(self, message):
        attempt = {"start": time.time(), "end": None, "outcome": None, "code": None, "error": None,
                   "after_data": False, "acknowledged": None}
        try:
            self._send(message, attempt)
            attempt["outcome"] = "accepted"
        except (OSError, smtplib.SMTPException) as error:
            # The 250 came and only QUIT failed: accepted all the same.
            attempt["outcome"] = "accepted" if attempt["acknowledged"] else classify(error)
            attempt["code"] = attempt["code"] or getattr(error, "smtp_code", None)
            attempt["error"] = f"{type(error).__name__}: {error}"[:240]
        attempt["end"] = time.time()
        with self.lock:
            self.in_flight -= 1
            message.attempts.append(attempt)
            if attempt["outcome"] == "accepted":
                message.accepted, message.state = attempt["acknowledged"], "accepted"
            elif attempt["outcome"] == "rejected":
                message.state = "rejected"
            else:
                retry = attempt["end"] + backoff(len(message.attempts))
                if retry <= self.retry_deadline and not self.stopped.is_set():
                    heapq.heappush(self.due, (retry, next(self.sequence), message))
                    self.wakeup.notify_all()
                else:
                    message.state = "unsent"

    def _send(self, message, attempt):
        """One SMTP transaction, step by step: a failure after the data went out may mean
        the server kept the message (a retry can then make a duplicate, as with any MTA)."""
        port = self.lab.ports["submission" if message.kind == "submission" else "smtp"]
        # An MTA says HELO with its own name (here the sender's domain, which resolves in the lab).
        helo = self.domain if message.kind == "submission" else message.sender.split("@")[1]
        with smtplib.SMTP(self.lab.lb_address, port, local_hostname=helo, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if message.kind == "submission":
                smtp.starttls(context=self.tls)
                smtp.ehlo()
                smtp.login(message.login, self.lab.users[message.login]["password"])
            elif smtp.has_extn("starttls"):
                # Opportunistic, as between MTAs: encrypted, the certificate not checked.
                smtp.starttls(context=self.mta_tls)
                smtp.ehlo()
            code, reply = smtp.mail(message.sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, message.sender)
            code, reply = smtp.rcpt(message.rcpt)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({message.rcpt: (code, reply)})
            code, reply = smtp.docmd("DATA")
            if code != 354:
                raise smtplib.SMTPDataError(code, reply)
            attempt["after_data"] = True
            # As smtplib's data() does, less its 354 handling (message.text ends with CRLF).
            smtp.send(smtplib._quote_periods(message.text) + b".\r\n")
            code, reply = smtp.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            attempt["code"], attempt["acknowledged"] = code, time.time()  # before QUIT: the 250 is what counts

    # --- reads ---------------------------------------------------------------------------
    def _make_reads(self):
        if not self.read_rate or not self.read_users:
            return
        start = time.time()
        plan = itertools.cycle(itertools.product(("pop3", "imap"), self.read_users))
        for i in itertools.count():
            delay = start + i / self.read_rate - time.time()
            if delay > 0 and self.stopped.wait(delay):
                return
            if not self.sending.is_set():
                return
            proto, user = next(plan)
            # A client whose last login still hangs does not pile up more: the slot is skipped.
            if not self.read_slots.acquire(blocking=False):
                with self.lock:
                    self.reads_skipped += 1
                continue
            try:
                self.read_pool.submit(self._read, proto, user)
            except RuntimeError:
                return

    def _read(self, proto, user):
        """One session as a mail client makes it: STARTTLS, login, look at the INBOX, log out."""
        record = {"start": time.time(), "end": None, "proto": proto, "user": user, "ok": False, "error": None}
        password = self.lab.users[user]["password"]
        try:
            if proto == "pop3":
                client = poplib.POP3(self.lab.lb_address, self.lab.ports["pop3"], timeout=self.timeout)
                try:
                    client.stls(self.tls)
                    client.user(user)
                    client.pass_(password)
                    client.stat()
                finally:
                    _quietly(client.quit)
            else:
                client = imaplib.IMAP4(self.lab.lb_address, self.lab.ports["imap"], timeout=self.timeout)
                try:
                    client.starttls(ssl_context=self.tls)
                    client.login(user, password)
                    status, _ = client.select("INBOX", readonly=True)
                    if status != "OK":
                        raise imaplib.IMAP4.error(f"SELECT INBOX: {status}")
                finally:
                    _quietly(client.logout)
            record["ok"] = True
        except Exception as error:  # noqa: BLE001 (whatever broke, the login failed; the slot is freed below)
            record["error"] = f"{type(error).__name__}: {error}"[:240]
        record["end"] = time.time()
        with self.lock:
            self.reads.append(record)
        self.read_slots.release()


def _quietly(close):
    try:
        close()
    except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error):
        pass

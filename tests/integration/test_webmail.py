"""Roundcube through lb1:443 in a real browser (headless Chromium): log in, read mail the
platform delivered, send mail, make a Sieve filter that then acts, set an out-of-office
reply that reaches the outside once, a wrong password.
Desktop and phone screenshots are kept in artifacts/webmail/."""

import socket
import time
import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from browser import Webmail, browser_home, start
from mailclient import PASSWORDS, ManageSieve, address, imap_login, imap_messages, message, tls_context, wait_for
from outside import smtp_from_inet1
from test_spamcheck import at_inet1

USER = "dave@example.org"


@pytest.fixture(scope="module")
def service_name(lab, lab_host):
    return lab_host("web1").check_output("sed -n 's/^ *server_name \\(.*\\);/\\1/p' "
                                         "/etc/nginx/conf.d/ispmail-webmail.conf | head -1")


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    return browser_home(lab, tmp_path_factory.mktemp("browser-home"))


def session(lab, home, service_name, phone=False):
    driver = start(home, service_name, address(lab, "lb1"), phone=phone)
    return Webmail(driver, f"https://{service_name}/")


@pytest.fixture
def desktop(lab, home, service_name):
    webmail = session(lab, home, service_name)
    yield webmail
    webmail.driver.quit()


@pytest.fixture
def phone(lab, home, service_name):
    webmail = session(lab, home, service_name, phone=True)
    yield webmail
    webmail.driver.quit()


def inbound(lab, lab_host, user, subject=None, sender="friend@example.net"):
    subject, text = message(user, subject=subject, sender=sender, body="Sent from inet1.\r\n")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, [user], text, sender)["ok"]
    assert wait_for(lambda: imap_messages(lab, "gw2", user, subject), 40), "not delivered"
    return subject


def test_login_page_over_tls_through_the_lb_sees_the_real_client(lab, lab_host, service_name):
    marker = f"probe-{uuid.uuid4().hex}"
    with socket.create_connection((address(lab, "lb1"), 443), timeout=30) as raw:
        runner = raw.getsockname()[0]
        # The certificate must name the service (checked against the lab CA).
        with tls_context(lab).wrap_socket(raw, server_hostname=service_name) as tls:
            tls.sendall(f"GET /?{marker} HTTP/1.1\r\nHost: {service_name}\r\nConnection: close\r\n\r\n".encode())
            page = b"".join(iter(lambda: tls.recv(65536), b"")).decode(errors="replace")
    assert page.startswith("HTTP/1.1 200") and 'id="rcmloginuser"' in page
    [line] = lab_host("web1").check_output(f"grep {marker} /var/log/nginx/webmail.access.log").splitlines()
    # The PROXY header gave nginx the test runner's address, not the load balancer's.
    assert line.startswith(runner + " ") and runner != address(lab, "lb1"), line


def test_wrong_password_is_refused(lab, lab_host, desktop, phone):
    desktop.login(USER, "not-the-password")
    assert "Login failed" in desktop.alert()
    desktop.screenshot("login-failed-desktop")
    phone.driver.get(phone.url)
    phone.find("#rcmloginuser")
    phone.screenshot("login-phone")
    log = lab_host("web1").check_output("tail -5 /var/log/roundcube/userlogins.log")
    assert f"Failed login for {USER}" in log


def test_login_shows_mail_delivered_through_the_platform(lab, lab_host, desktop, phone):
    subject = inbound(lab, lab_host, USER)
    for webmail, name in ((desktop, "inbox-desktop"), (phone, "inbox-phone")):
        webmail.login(USER, PASSWORDS[USER])
        webmail.logged_in()
        row = webmail.wait.until(lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#messagelist tbody tr")
                                            if subject in r.text])
        assert row
        webmail.screenshot(name)


def test_mail_sent_from_webmail_arrives(lab, desktop):
    rcpt = "bob@example.com"
    subject = f"from webmail {uuid.uuid4().hex}"
    desktop.login(USER, PASSWORDS[USER])
    desktop.logged_in()
    desktop.open("_task=mail&_action=compose")
    desktop.visible("#compose_to input").send_keys(rcpt + ",")
    desktop.find("#compose-subject").send_keys(subject)
    desktop.find("#composebody").send_keys("Written in the browser.")
    desktop.screenshot("compose-desktop")
    desktop.find("button.send").click()
    [msg] = wait_for(lambda: imap_messages(lab, "gw2", rcpt, subject), 40) or [None]
    assert msg is not None, "the message did not arrive"
    assert USER in msg["From"]
    received = " ".join(" ".join(str(h).split()) for h in msg.get_all("Received"))
    assert "(Postfix-submit)" in received and "ESMTPSA" in received  # submission with the user's login


def test_filter_made_in_webmail_acts_on_new_mail(lab, lab_host, desktop):
    folder = "Receipts"
    imap = imap_login(lab, "gw2", USER, PASSWORDS[USER])
    try:
        imap.create(folder)
        imap.subscribe(folder)
    finally:
        imap.logout()
    token = f"receipt-{uuid.uuid4().hex[:8]}"
    desktop.login(USER, PASSWORDS[USER])
    desktop.logged_in()
    desktop.open("_task=settings&_action=plugin.managesieve")
    desktop.find("a.create").click()
    desktop.driver.switch_to.frame(desktop.find("#filter-box"))
    desktop.find("#_name").send_keys(f"Receipts {token}")
    Select(desktop.find("#header0")).select_by_value("subject")
    Select(desktop.find("#rule_op0")).select_by_value("contains")
    desktop.find("input[name='_rule_target[0][]']").send_keys(token)
    Select(desktop.find("#action_type0")).select_by_value("fileinto")
    Select(desktop.find("#action_mailbox0")).select_by_value(folder)
    desktop.driver.find_element(By.XPATH, "//button[normalize-space()='Save']").click()
    desktop.driver.switch_to.default_content()
    assert wait_for(lambda: token in desktop.driver.find_element(By.CSS_SELECTOR, "#filterslist").text, 20)
    desktop.screenshot("filter-desktop")

    # New mail matching the rule lands in the folder, not in the INBOX.
    subject, text = message(USER, subject=f"Your order {token}", sender="shop@example.net")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, [USER], text, "shop@example.net")["ok"]
    assert wait_for(lambda: imap_messages(lab, "gw2", USER, subject, folder=folder), 40), "not filed by the filter"
    assert not imap_messages(lab, "gw2", USER, subject)


def test_address_book_lists_the_users_own_domain(lab, desktop):
    desktop.login(USER, PASSWORDS[USER])
    desktop.logged_in()
    desktop.open("_task=addressbook&_source=ispmail")
    desktop.find("#contacts-table")
    names = wait_for(lambda: desktop.driver.find_element(By.CSS_SELECTOR, "#contacts-table").text, 20)
    assert "carol@example.org" in names and "dave@example.org" in names
    assert "example.com" not in names
    desktop.screenshot("contacts-desktop")


def test_out_of_office_set_in_webmail_replies_once(lab, lab_host, desktop):
    """The reply leaves the mailbox server through its null client, a gateway's route
    instance, std and the spamcheck tier, with the null sender; a second message from the
    same sender within the period gets none."""
    user, sender = "carol@example.org", "friend@example.net"
    token = uuid.uuid4().hex[:8]
    desktop.login(user, PASSWORDS[user])
    desktop.logged_in()
    desktop.open("_task=settings&_action=plugin.managesieve-vacation")
    for field, text in (("#vacation_subject", f"Away {token}"), ("#vacation_reason", "Back next week.")):
        desktop.find(field).clear()  # the form shows the last rule saved
        desktop.find(field).send_keys(text)
    Select(desktop.find("#vacation_status")).select_by_value("on")
    desktop.driver.find_element(By.XPATH, "//button[normalize-space()='Save']").click()
    saved = wait_for(lambda: "successfully" in desktop.find("#messagestack").text.lower(), 20)
    assert saved, f"Roundcube did not save the vacation rule: {desktop.find('#messagestack').text}"
    desktop.screenshot("vacation-desktop")
    try:
        subjects = [inbound(lab, lab_host, user, sender=sender) for _ in range(2)]
        replies = wait_for(lambda: at_inet1(lab_host, sender, f"Away {token}"), 60)
        assert replies, "no vacation reply reached inet1 (mailq on the mailbox servers and gateways)"
        assert all(imap_messages(lab, "gw2", user, subject) for subject in subjects)
        time.sleep(5)  # the second message was delivered: had it been answered, the reply would be on its way
        replies = at_inet1(lab_host, sender, f"Away {token}")
        assert len(replies) == 1, f"{len(replies)} replies to two messages within the vacation period"
        reply = lab_host("inet1").file(replies[0]).content_string
        assert "Return-Path: <>" in reply and "Auto-Submitted: auto-replied" in reply
        assert f"Subject: Away {token}\n" in reply and "Back next week." in reply
        assert "(Postfix-route)" in reply, "the reply did not take the gateways' outbound path"
    finally:
        sieve = ManageSieve(lab, "gw2")
        try:
            sieve.login(user, PASSWORDS[user])
            sieve.command('SETACTIVE ""')
        finally:
            sieve.close()

"""Headless Chromium (Debian's, through chromium-driver) for the webmail tests.

The browser trusts the lab CA through its own NSS database (no certificate errors are
ignored) and reaches the webmail by its service name, mapped to lb1. Screenshots are
kept under artifacts/webmail/ as test artifacts.
"""

import os
import subprocess
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "webmail"
DESKTOP = (1366, 900)
PHONE = {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0, "touch": True},
         "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                      "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}


def browser_home(lab, directory):
    """A HOME whose NSS database trusts the lab CA (Chromium reads ~/.pki/nssdb)."""
    nssdb = Path(directory) / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    ca = Path(lab["root"]) / ".cache" / f"{lab['lab_name']}-pki" / "ca.crt"
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "ispmail-lab-ca", "-i", str(ca)],
                   check=True, capture_output=True)
    return str(directory)


def start(home, service_name, lb_address, phone=False):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                     f"--host-resolver-rules=MAP {service_name} {lb_address}"]:
        options.add_argument(argument)
    if phone:
        options.add_experimental_option("mobileEmulation", PHONE)
    # The driver path is given, so Selenium Manager never tries to download one.
    previous = os.environ.get("HOME")
    os.environ["HOME"] = home
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    finally:
        os.environ["HOME"] = previous or ""
    if not phone:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": DESKTOP[0], "height": DESKTOP[1], "deviceScaleFactor": 1, "mobile": False})
    return driver


class Webmail:
    """One browser session on the webmail."""

    def __init__(self, driver, url):
        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, 60)  # a loaded CI host renders slowly

    def find(self, css):
        return self.wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))

    def visible(self, css):
        return self.wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def login(self, user, password):
        self.driver.get(self.url)
        self.find("#rcmloginuser").send_keys(user)
        self.find("#rcmloginpwd").send_keys(password)
        self.find("#rcmloginsubmit").click()

    def logged_in(self):
        return self.find("#messagelist")

    def alert(self):
        return self.visible("#messagestack div").text

    def open(self, query):
        self.driver.get(f"{self.url}?{query}")

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

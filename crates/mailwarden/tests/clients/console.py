#!/usr/bin/env python3
"""Drive mailwarden's web console in headless Chromium (Debian's chromium and chromium-driver,
through selenium), as an administrator would, and print what each step saw as one JSON object.

    console.py --url http://127.0.0.1:PORT --user admin@x --password pw \
               --sender spammer@bad.test --account alice@example.test \
               --release-subject "Exquisite" --xss-marker "XSS-" [--screenshots DIR]

The Rust test (tests/e2e/console.rs) asserts on the JSON and on the server's state after.
"""
import argparse
import json
import sys

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def browser():
    o = Options()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,1000", "--no-first-run", "--disable-background-networking"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def alert_present(d):
    try:
        d.switch_to.alert
        return True
    except NoAlertPresentException:
        return False


def main():
    p = argparse.ArgumentParser()
    for a in ("--url", "--user", "--password", "--sender", "--account", "--release-subject",
              "--xss-marker"):
        p.add_argument(a, required=True)
    p.add_argument("--screenshots")
    args = p.parse_args()
    out = {}
    d = browser()
    d.set_page_load_timeout(30)
    base = args.url.rstrip("/")

    def text(css):
        return d.find_element(By.CSS_SELECTOR, css).text

    def go(element):
        """Click something that loads a page, and wait for the new page."""
        old = d.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(d, 30).until(EC.staleness_of(old))
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def shot(name):
        if args.screenshots:
            d.save_screenshot(f"{args.screenshots}/{name}")

    try:
        # Log in: a wrong password first.
        d.get(base + "/")
        out["redirected_to_login"] = d.current_url.endswith("/login")
        d.find_element(By.ID, "username").send_keys(args.user)
        d.find_element(By.ID, "password").send_keys("not-the-password")
        go(d.find_element(By.ID, "login"))
        out["wrong_password_error"] = text("#error")
        out["wrong_password_url"] = d.current_url
        d.find_element(By.ID, "username").clear()
        d.find_element(By.ID, "username").send_keys(args.user)
        d.find_element(By.ID, "password").send_keys(args.password)
        go(d.find_element(By.ID, "login"))
        out["after_login_title"] = d.title
        out["overview_reject_today"] = text("#day-reject")
        out["overview_quarantine_today"] = text("#day-quarantine")
        out["overview_has_chart"] = len(d.find_elements(By.CSS_SELECTOR, "#chart-24h svg rect")) > 0
        cookie = d.get_cookie("mw_console") or {}
        out["cookie_httponly"] = cookie.get("httpOnly")
        out["cookie_samesite"] = cookie.get("sameSite")
        shot("console-overview.png")

        # Decisions: the rejected message, by sender, then its explanation.
        go(d.find_element(By.LINK_TEXT, "Decisions"))
        d.find_element(By.ID, "q-sender").send_keys(args.sender)
        go(d.find_element(By.ID, "search"))
        rows = d.find_elements(By.CSS_SELECTOR, "#records tr td:nth-child(2) a")
        out["decisions_found"] = len(rows)
        if rows:
            go(rows[0])
            out["explain"] = text("#explain")
            shot("console-explain.png")

        # Accounts: suspend, then resume.
        d.get(base + "/accounts/" + args.account)
        out["state_before"] = text("#account-state")
        d.find_element(By.NAME, "reason").send_keys("console test")
        go(d.find_element(By.ID, "suspend"))
        out["state_suspended"] = text("#account-state")
        out["suspend_notice"] = text("#notice")
        go(d.find_element(By.XPATH, "//button[contains(., 'Resume, releasing')]"))
        out["state_resumed"] = text("#account-state")

        # Domains: the records to publish, then the self-audit on request.
        d.get(base + "/domains/" + args.account.split("@")[1])
        out["domain_records"] = text("#records")
        go(d.find_element(By.XPATH, "//button[contains(., 'Run the self-audit')]"))
        out["audit_rows"] = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")[:3]]
                             for tr in d.find_elements(By.CSS_SELECTOR, "#audit tr")][1:]

        # Quarantine: the message whose Subject and From carry markup.
        d.get(base + "/quarantine")
        out["quarantine_rows"] = len(d.find_elements(By.CSS_SELECTOR, "#quarantine tr")) - 1
        out["list_imgs"] = len(d.find_elements(By.TAG_NAME, "img"))
        out["list_scripts_in_body"] = len(d.find_elements(By.CSS_SELECTOR, "main script"))
        xss = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#quarantine tr")
               if args.xss_marker in a.text
               for a in a.find_elements(By.CSS_SELECTOR, "td:first-child a")]
        plain = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#quarantine tr")
                 if args.release_subject in a.text and args.xss_marker not in a.text
                 for a in a.find_elements(By.CSS_SELECTOR, "td:first-child a")]
        out["list_title"] = d.title
        # Escaped, the markup is text: the subject cells hold no element at all.
        out["list_subject_children"] = d.execute_script(
            "return Array.from(document.querySelectorAll('td.subject')).reduce((n, td) => n + td.children.length, 0)")
        if xss:
            d.get(xss[0])
            out["xss_subject_text"] = text("#q-subject")
            out["xss_from_text"] = text("#q-from")
            out["xss_page_imgs"] = len(d.find_elements(By.TAG_NAME, "img"))
            out["xss_page_scripts"] = len(d.find_elements(By.CSS_SELECTOR, "main script"))
            out["xss_title"] = d.title
            out["xss_alert"] = alert_present(d)
            out["xss_subject_children"] = d.execute_script(
                "return document.getElementById('q-subject').children.length")
            out["xss_subject_html"] = d.execute_script(
                "return document.getElementById('q-subject').innerHTML")
        if plain:
            # An action without its CSRF token: the form's hidden field removed.
            d.get(plain[0])
            d.execute_script("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
            go(d.find_element(By.ID, "release"))
            out["no_csrf_page"] = d.find_element(By.TAG_NAME, "body").text
            # And with it.
            d.get(plain[0])
            d.find_element(By.NAME, "learn_ham").click()
            go(d.find_element(By.ID, "release"))
            out["release_notice"] = text("#notice")
    finally:
        d.quit()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

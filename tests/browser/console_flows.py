"""The console in a real browser: Debian's headless chromium, driven through chromedriver by
Selenium. tests/console_browser.rs prepares the database, starts `bulkhead console`, runs this
script and then checks the database for what the clicks did.

Input: the environment (CONSOLE_URL, the three logins and passwords, tenant ids and slugs, the
template, SHOTS for screenshots, DOWNLOADS for the CSV). Output: one JSON object on the last line
of stdout (the key secret the page showed, the CSV's path, the receipt id). Any failed check
raises, and the script exits non-zero with the page's text.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ENV = os.environ
BASE = ENV["CONSOLE_URL"]
SHOTS = ENV["SHOTS"]
DOWNLOADS = ENV["DOWNLOADS"]
os.makedirs(SHOTS, exist_ok=True)
os.makedirs(DOWNLOADS, exist_ok=True)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = ENV.get("CHROMIUM", "/usr/bin/chromium")
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000",
                     "--disable-gpu", "--no-first-run", "--password-store=basic"]:
        options.add_argument(argument)
    options.add_experimental_option("prefs", {
        "download.default_directory": DOWNLOADS,
        "download.prompt_for_download": False,
        "credentials_enable_service": False,
    })
    return webdriver.Chrome(service=Service(ENV.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)


driver = browser()
step = "start"


def check(condition, what):
    if not condition:
        raise AssertionError(f"{step}: {what}\n--- page {driver.current_url} ---\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}")


def shot(name):
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def text():
    return driver.find_element(By.TAG_NAME, "body").text


def no_alert():
    try:
        driver.switch_to.alert
        return False
    except NoAlertPresentException:
        return True


def click_and_wait(element):
    """Clicks something that loads a new page, and waits until it has."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_):
        # The old page's root is gone: chromedriver says so as a stale element, or (while the
        # new document is being attached) as "node does not belong to the document".
        try:
            page.is_enabled()
            return False
        except (StaleElementReferenceException, WebDriverException):
            return True

    WebDriverWait(driver, 15).until(replaced)
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def sign_in(login, password):
    driver.delete_all_cookies()
    driver.get(f"{BASE}/sign-in")
    driver.find_element(By.NAME, "login").send_keys(login)
    driver.find_element(By.NAME, "password").send_keys(password)
    click_and_wait(driver.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]"))


def submit(form_selector):
    click_and_wait(driver.find_element(By.CSS_SELECTOR, f"{form_selector} button[type=submit]"))


ADMIN, SUPPORT, FINANCE = ENV["ADMIN_LOGIN"], ENV["SUPPORT_LOGIN"], ENV["FINANCE_LOGIN"]
ACME, XSS, DOOMED = ENV["ACME_ID"], ENV["XSS_ID"], ENV["DOOMED_ID"]
TEMPLATE = ENV["TEMPLATE"]
result = {}

try:
    # ---------------------------------------------------------------- sign-in
    step = "wrong password"
    sign_in(ADMIN, "not-" + ENV["ADMIN_PASSWORD"])
    check("wrong login or password" in text(), "a wrong password is refused")
    check(ENV["ADMIN_PASSWORD"] not in driver.page_source, "the page shows the password")
    shot("sign_in_refused")

    step = "admin signs in"
    sign_in(ADMIN, ENV["ADMIN_PASSWORD"])
    check(driver.current_url.endswith("/tenants"), "signed in to the tenants page")
    check("Finance" in text() and "Deletions" in text(), "the admin's navigation")

    # ---------------------------------------------------------------- Tenants
    step = "tenants page"
    driver.get(f"{BASE}/tenants?q=console-browser")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#tenants tbody tr")) >= 3, "the test's tenants are listed")
    check("<script>alert" in text(), "the markup in a tenant name shows as text")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#tenants script")) == 0, "a script element from a tenant name")
    check(no_alert(), "a tenant name ran a script")
    meters = driver.find_elements(By.CSS_SELECTOR, "#tenants meter")
    check(len(meters) >= 3, "each tenant has its spend bar")
    classes = {m.get_attribute("class") for m in meters}
    check("over" in classes and "near" in classes, f"bars turn amber and red: {classes}")
    shot("tenants")
    Select(driver.find_element(By.NAME, "sort")).select_by_value("used")
    Select(driver.find_element(By.NAME, "dir")).select_by_value("desc")
    submit("form.filters")
    first = driver.find_element(By.CSS_SELECTOR, "#tenants tbody tr td a").text
    check(first == ENV["ACME_NAME"], f"sorted by budget used, the over-budget tenant first (got {first})")

    # ---------------------------------------------------------------- Tenant
    step = "tenant page"
    driver.get(f"{BASE}/tenants/{ACME}")
    charts = driver.find_elements(By.CSS_SELECTOR, "img.chart")
    check(len(charts) == 2, "two charts")
    time.sleep(0.5)
    for chart in charts:
        check(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", chart), "a chart drawn")
    check("env:…" in text(), "the credential reference is masked")
    check(ENV["CREDENTIAL_REF"] not in driver.page_source, "the full credential reference is shown")
    shot("tenant")

    step = "create an API key"
    driver.find_element(By.CSS_SELECTOR, "form[action$='/keys'] input[name=name]").send_keys("browser key")
    submit("form[action$='/keys']")
    secret = driver.find_element(By.ID, "secret").text
    check(secret.startswith("bk_"), f"the secret is shown once: {secret!r}")
    result["key_secret"] = secret
    shot("key_created")
    driver.get(f"{BASE}/tenants/{ACME}")
    check(secret not in driver.page_source, "the secret is shown again")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr") if "browser key" in r.text][0]
    click_and_wait(row.find_element(By.CSS_SELECTOR, "button"))
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr") if "browser key" in r.text][0]
    check("revoked" in row.text, "the key shows as revoked")

    step = "suspend a tenant"
    driver.get(f"{BASE}/tenants/{XSS}")
    submit("form[action$='/status']")
    check("suspended" in driver.find_element(By.CSS_SELECTOR, "h1 .status").text, "the tenant shows as suspended")

    # ---------------------------------------------------------------- Prompts
    step = "prompt diff"
    driver.get(f"{BASE}/tenants/{ACME}/prompts")
    click_and_wait(driver.find_element(By.LINK_TEXT, TEMPLATE))
    check(driver.find_element(By.ID, "active-version").text == "2", "version 2 is active")
    Select(driver.find_element(By.CSS_SELECTOR, "#compare select[name=a]")).select_by_value("2")
    Select(driver.find_element(By.CSS_SELECTOR, "#compare select[name=b]")).select_by_value("3")
    vars_box = driver.find_element(By.CSS_SELECTOR, "#compare input[name=vars]")
    vars_box.clear()
    vars_box.send_keys('{"question": "Where is my order?"}')
    submit("#compare")
    changed = driver.find_elements(By.CSS_SELECTOR, "#slots-diff tr.changed")
    check(len(changed) >= 1, "the slots that differ are marked")
    renders = driver.find_element(By.ID, "render-diff").text
    check("Where is my order?" in renders, "both versions rendered with the sample variables")
    shot("prompt")

    step = "the gate refuses"
    Select(driver.find_element(By.CSS_SELECTOR, "#activate select[name=version]")).select_by_value("3")
    submit("#activate")
    refusal = text()
    check("409" in refusal and "eval" in refusal.lower(), "the gate's refusal and its reason")
    check("start_eval" in refusal, "the hint says what to do")
    shot("gate_refused")

    step = "force needs a reason"
    driver.back()
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "activate"))
    Select(driver.find_element(By.CSS_SELECTOR, "#activate select[name=version]")).select_by_value("3")
    driver.find_element(By.CSS_SELECTOR, "#activate input[name=force]").click()
    submit("#activate")
    check("reason" in text(), "a forced release without a reason is refused")

    step = "roll back"
    driver.get(f"{BASE}/tenants/{ACME}/prompts/{TEMPLATE}")
    submit("#rollback")
    check(driver.find_element(By.ID, "active-version").text == "1", "the rollback made version 1 active")
    first_release = driver.find_element(By.CSS_SELECTOR, "#releases tbody tr").text
    check("rollback" in first_release and ADMIN in first_release, f"the history records the rollback and who: {first_release}")

    # ---------------------------------------------------------------- Evals
    step = "evals"
    driver.get(f"{BASE}/evals")
    check(ENV["ACME_SLUG"] in text(), "the tenant's run is listed")
    shot("evals")
    click_and_wait(driver.find_element(By.CSS_SELECTOR, "#eval-runs tbody tr td:nth-child(4) a"))
    check("Eval run" in text() and len(driver.find_elements(By.CSS_SELECTOR, "#cases tbody tr")) >= 1, "the run's cases, in its tenant's page")
    shot("eval_run")

    # ---------------------------------------------------------------- Deletion
    step = "delete a tenant"
    driver.get(f"{BASE}/tenants/{DOOMED}/delete")
    driver.find_element(By.NAME, "confirm").send_keys("not-the-slug")
    submit("#delete")
    check("Nothing was deleted" in text(), "a wrong confirmation deletes nothing")
    shot("delete")
    driver.find_element(By.NAME, "confirm").send_keys(ENV["DOOMED_SLUG"])
    submit("#delete")
    result["receipt_id"] = driver.find_element(By.ID, "receipt-id").text
    check("bulkhead.ledger" in text(), "the receipt lists the tables")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#pending tbody tr")) >= 1, "the external steps still pending")
    shot("receipt")

    # ---------------------------------------------------------------- Support
    step = "support"
    sign_in(SUPPORT, ENV["SUPPORT_PASSWORD"])
    check("Finance" not in driver.find_element(By.CSS_SELECTOR, "header nav").text, "support sees no Finance")
    driver.get(f"{BASE}/tenants/{ACME}")
    check("Credentials" not in text() and "env:" not in driver.page_source, "support sees no credentials")
    check("Delete tenant" not in text() and "$" not in text(), "support sees no deletion and no money")
    shot("tenant_as_support")
    driver.get(f"{BASE}/tenants/{ACME}/delete")
    driver.find_element(By.NAME, "confirm").send_keys(ENV["ACME_SLUG"])
    submit("#delete")
    check("403" in text() and "permission denied for function delete_tenant" in text(), "the database refuses support's deletion")
    driver.get(f"{BASE}/receipts")
    check("403" in text(), "support reads no receipts")

    # ---------------------------------------------------------------- Finance
    step = "finance"
    sign_in(FINANCE, ENV["FINANCE_PASSWORD"])
    driver.get(f"{BASE}/finance?period={ENV['PERIOD']}")
    check(ENV["ACME_SLUG"] in text(), "the month's spend per tenant")
    shot("finance")
    for old in os.listdir(DOWNLOADS):
        os.remove(os.path.join(DOWNLOADS, old))
    driver.find_element(By.ID, "csv").click()
    path = os.path.join(DOWNLOADS, f"bulkhead-usage-{ENV['PERIOD']}.csv")
    for _ in range(100):
        if os.path.exists(path):
            break
        time.sleep(0.1)
    check(os.path.exists(path), f"the CSV was downloaded: {os.listdir(DOWNLOADS)}")
    result["csv_path"] = path
    driver.get(f"{BASE}/tenants/{ACME}")
    check(len(driver.find_elements(By.CSS_SELECTOR, "form[action$='/status']")) == 0, "finance gets no suspend button")
    driver.get(f"{BASE}/tenants/{DOOMED}/delete")
    check("404" in text() or "No such tenant" in text(), "a deleted tenant is gone")
    driver.get(f"{BASE}/tenants/{ACME}/delete")
    driver.find_element(By.NAME, "confirm").send_keys(ENV["ACME_SLUG"])
    submit("#delete")
    check("403" in text() and "permission denied" in text(), "the database refuses finance's deletion")

    step = "sign out"
    driver.get(f"{BASE}/tenants")
    click_and_wait(driver.find_element(By.CSS_SELECTOR, "form.who button"))
    driver.get(f"{BASE}/finance")
    check(driver.current_url.endswith("/sign-in"), "signed out")
    print(json.dumps(result))
finally:
    driver.quit()

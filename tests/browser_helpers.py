"""The browser tier's machinery: headless Chromium (Debian's `chromium` + `chromium-driver`, from
scripts/install-browser.sh) driven through Selenium, shared by tests/test_browser_local.py (the
local platform) and tests/e2e/test_browser_compose.py (the compose stack on its published port).

One `Browser` per test module. Every page a test opens goes through `Browser.page()`, which records
from Chromium's performance and console logs:

- each request that failed: HTTP 4xx/5xx, or a network error (`Network.loadingFailed`);
- each request to any host other than the one the page was opened on;
- each console message at level SEVERE;

and fails the test listing them, unless ALLOWED (below) names them. On any failure inside the page
it saves a screenshot and prints its path.

Chromium itself (not the pages) calls Google and DuckDuckGo services at start even with
`--disable-background-networking`: sign-in, component updates, the new-tab page's search provider.
This machine may reach nothing but the package registries, so the browser runs with a proxy on a
closed loopback port (loopback addresses bypass it): every non-loopback request fails inside
Chromium and no DNS query leaves. `Browser.quit()` then reads Chromium's own net log and fails if
any TCP connection, DNS transaction or UDP datagram went to a non-loopback address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from mlstack.runner import TRAINING_VIEW_QUERY, run_link

CHROMIUM = "/usr/lib/chromium/chromium"  # the binary itself, see `chrome_options`
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 900)
PAGE_TIMEOUT_SECONDS = 60  # the UI's first load on 2 busy cores, compose stack included
QUIET_SECONDS = 1.5  # no network event for this long: the page has settled
DOC_SCREENSHOTS = ("experiments.png", "run-page.png", "registry-champion.png")
# The UI's workspace-wide view switch ("GenAI" | "Model training"). MLflow 3.17 keeps it per
# browser (localStorage `mlflow.workflowType_v1`, default "genai") and honours this query parameter
# over it; the experiment tag `mlflow.experimentKind` does not change it (docs/browser-tests.md).
TRAINING_VIEW = TRAINING_VIEW_QUERY  # the same query the trainers' summary links carry
CHAMPION = "champion"

T = TypeVar("T")


@dataclass(frozen=True)
class Allowed:
    """A known, harmless problem: `kind` ("failed", "console" or "foreign") and a regex on the
    recorded line. Each entry says why it is harmless; anything else fails the test."""

    kind: str
    pattern: str
    why: str

    def matches(self, kind: str, line: str) -> bool:
        return kind == self.kind and re.search(self.pattern, line) is not None


ALLOWED: tuple[Allowed, ...] = (
    # The UI asks who is logged in on every load. Without `--app-name basic-auth` MLflow has no
    # users endpoint and answers 404; the UI then carries on without a user name. Chromium logs
    # every 4xx as a console error too, hence both entries.
    Allowed(
        "failed",
        r"^GET \S+/ajax-api/2\.0/mlflow/users/current -> 404$",
        "auth is off: MLflow has no users endpoint",
    ),
    Allowed(
        "console",
        r"/ajax-api/2\.0/mlflow/users/current - Failed to load resource: the server responded "
        r"with a status of 404",
        "the console echo of the same 404",
    ),
)


@dataclass
class Request:
    request_id: str
    method: str
    url: str
    status: int | None = None
    mime: str = ""
    error: str | None = None
    done: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.status is not None and self.status >= 400)

    def describe(self) -> str:
        outcome = self.error if self.error is not None else str(self.status)
        return f"{self.method} {self.url} -> {outcome}"


@dataclass
class PageRecord:
    """What one page did: its requests (by CDP request id) and its SEVERE console lines."""

    name: str
    origin: str
    requests: dict[str, Request] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found: list[tuple[str, str]] = []
        for request in self.requests.values():
            if request.failed:
                found.append(("failed", request.describe()))
            if is_network_url(request.url) and netloc(request.url) != self.origin:
                found.append(("foreign", request.describe()))
        found += [("console", line) for line in self.console]
        return [
            f"{kind}: {line}"
            for kind, line in found
            if not any(allowed.matches(kind, line) for allowed in ALLOWED)
        ]


def is_network_url(url: str) -> bool:
    """http(s)/ws(s): what goes over a socket (data:, blob:, chrome: do not)."""
    return urlsplit(url).scheme in ("http", "https", "ws", "wss")


def netloc(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    return f"{parts.hostname}:{port}"


def chrome_options(user_data_dir: Path, net_log: Path) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    # /usr/bin/chromium is Debian's wrapper script: it adds --enable-remote-extensions and exports
    # Google API keys, both of which make the browser call Google. The binary needs neither.
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-pings",
        "--disable-quic",
        # Nothing but loopback: non-loopback requests go to a proxy on a closed port and fail
        # inside the browser; names other than localhost never reach a DNS server.
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={user_data_dir}",
        f"--log-net-log={net_log}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


class Browser:
    """One headless Chromium for a test module, fresh profile, every page recorded."""

    def __init__(self, results_dir: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.results_dir = results_dir
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._profile = Path(tempfile.mkdtemp(prefix="mlstack-chromium-"))
        self.net_log = self.results_dir / "chromium-netlog.json"
        self.driver = webdriver.Chrome(
            service=Service(CHROMEDRIVER),
            options=chrome_options(self._profile, self.net_log),
        )
        self.driver.set_page_load_timeout(PAGE_TIMEOUT_SECONDS)
        self.record: PageRecord | None = None
        # The start page (Chromium's new-tab page) is not ours: drop what it logged.
        self.driver.get("about:blank")
        self._drain()

    # --- recording -------------------------------------------------------------------------
    def _drain(self) -> int:
        """Move the logs Chromium buffered into the current page's record; returns how many
        network events there were."""
        events = 0
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method", ""), message.get("params", {})
            if not method.startswith("Network.") or self.record is None:
                continue
            events += 1
            self._network_event(self.record, method, params)
        for entry in self.driver.get_log("browser"):
            if entry.get("level") == "SEVERE" and self.record is not None:
                self.record.console.append(entry["message"])
        return events

    @staticmethod
    def _network_event(record: PageRecord, method: str, params: dict[str, Any]) -> None:
        request_id = params.get("requestId", "")
        if method == "Network.requestWillBeSent":
            # A redirect reuses the request id: the final hop is the one that counts.
            record.requests[request_id] = Request(
                request_id, params["request"]["method"], params["request"]["url"]
            )
            return
        request = record.requests.get(request_id)
        if request is None:
            return
        if method == "Network.responseReceived":
            request.status = int(params["response"]["status"])
            request.mime = params["response"].get("mimeType", "")
        elif method == "Network.loadingFinished":
            request.done = True
        elif method == "Network.loadingFailed":
            request.error = params.get("errorText") or "failed"
            if params.get("blockedReason"):
                request.error += f" (blocked: {params['blockedReason']})"
            request.done = True

    def settle(self, timeout: float = 30) -> None:
        """Wait until no network event arrived for QUIET_SECONDS (or `timeout`)."""
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._drain():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            time.sleep(0.25)

    @contextmanager
    def page(self, name: str, url: str) -> Iterator[PageRecord]:
        """Open `url` as a user would (the address bar), yield its record; afterwards fail on any
        recorded problem not in ALLOWED. Any failure saves a screenshot first."""
        self._drain()  # whatever came before belongs to the previous page
        self.record = PageRecord(name=name, origin=netloc(url))
        try:
            self.driver.get(url)
            yield self.record
            self.settle()
            problems = self.record.problems()
            if problems:
                listed = "\n  ".join(problems)
                pytest.fail(f"{name} ({url}): the browser saw\n  {listed}", pytrace=False)
        except BaseException:
            shot = self.screenshot(f"failed-{slug(name)}.png")
            print(f"\n[browser] {name}: screenshot {shot}", file=sys.stderr, flush=True)
            raise
        finally:
            self._drain()
            self.record = None

    def requests(self, pattern: str) -> list[Request]:
        """Requests of the current page whose URL matches `pattern` (regex)."""
        assert self.record is not None, "only inside Browser.page()"
        self._drain()
        return [r for r in self.record.requests.values() if re.search(pattern, r.url)]

    # --- reading the page ------------------------------------------------------------------
    def wait_for(self, condition: Callable[[Any], T], what: str, timeout: float = 60) -> T:
        """Poll `condition(driver)` until it returns something truthy; fail naming `what`."""
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition(self.driver)
                if value:
                    return value
            except WebDriverException as error:  # stale or not yet rendered
                last = error
            self._drain()
            time.sleep(0.3)
        detail = f" (last error: {str(last).splitlines()[0]})" if last else ""
        pytest.fail(
            f"timed out after {timeout:.0f} s waiting for {what} on {self.driver.current_url}"
            f"{detail}\n--- page text\n{self.text()[:3000]}",
            pytrace=False,
        )

    def text(self) -> str:
        """The visible text of the page (non-breaking spaces as spaces)."""
        from selenium.webdriver.common.by import By

        try:
            body = self.driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            return ""
        return str(body).replace("\u00a0", " ")

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """Wait until the page shows every one of `needles`; returns the page text."""
        return self.wait_for(
            lambda _: (lambda text: text if all(n in text for n in needles) else "")(self.text()),
            f"the text {list(needles)}",
            timeout,
        )

    def blob_sha256(self, element: Any) -> str:
        """sha256 of the bytes an <img> displays, read inside the page (blob: or http URL)."""
        script = """
            const done = arguments[arguments.length - 1];
            fetch(arguments[0].src)
              .then((r) => r.arrayBuffer())
              .then((b) => crypto.subtle.digest('SHA-256', b))
              .then((d) => done(Array.from(new Uint8Array(d))
                                .map((x) => x.toString(16).padStart(2, '0')).join('')))
              .catch((e) => done('error: ' + e));
        """
        self.driver.set_script_timeout(30)
        return str(self.driver.execute_async_script(script, element))

    # --- screenshots -----------------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        path = self.results_dir / name
        self.driver.save_screenshot(str(path))
        return path

    def screenshot_for_docs(self, name: str) -> Path | None:
        """With MLSTACK_SCREENSHOTS_DIR set, save `name` there (the docs' images come from a real
        run: docs/browser-tests.md)."""
        assert name in DOC_SCREENSHOTS, name
        target = os.environ.get("MLSTACK_SCREENSHOTS_DIR")
        if not target:
            return None
        Path(target).mkdir(parents=True, exist_ok=True)
        path = Path(target) / name
        self.driver.save_screenshot(str(path))
        print(f"\n[browser] docs screenshot {path}", file=sys.stderr, flush=True)
        return path

    # --- the end ---------------------------------------------------------------------------
    def quit(self) -> list[str]:
        """Close the browser; returns every connection its net log shows off loopback."""
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)
        return off_loopback(self.net_log)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def off_loopback(net_log: Path) -> list[str]:
    """Non-loopback traffic in a Chromium net log: TCP connect attempts, DNS transactions, and UDP
    sockets that sent a datagram. (Chromium `connect()`s UDP sockets to a public address to learn
    its own local address; that sends nothing, so a UDP socket counts only once it sends.)"""
    if not net_log.exists():
        return [f"no net log at {net_log}: cannot tell where the browser connected"]
    log = json.loads(net_log.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    udp_peer: dict[int, str] = {}
    found: list[str] = []
    for event in log["events"]:
        name = names.get(event["type"], "")
        params = event.get("params") or {}
        source = int(event["source"]["id"])
        address = str(params.get("address", ""))
        if name == "TCP_CONNECT_ATTEMPT" and address and not _is_loopback(address):
            found.append(f"TCP connect to {address}")
        elif name == "UDP_CONNECT" and address:
            udp_peer[source] = address
        elif name == "UDP_BYTES_SENT":
            peer = address or udp_peer.get(source, "?")
            if not _is_loopback(peer):
                found.append(f"UDP datagram to {peer}")
        elif name == "DNS_TRANSACTION":
            found.append(f"DNS query for {params.get('hostname', '?')}")
    return sorted(set(found))


@contextmanager
def browser_session(results_dir: Path, say: Callable[[str], None]) -> Iterator[Browser]:
    """A Browser for one module; at its end, fail if the browser went off loopback."""
    started = time.monotonic()
    browser = Browser(results_dir)
    say(f"chromium up in {time.monotonic() - started:.1f} s; results in {results_dir}")
    try:
        yield browser
    finally:
        leaks = browser.quit()
        if leaks:
            pytest.fail(
                "Chromium connected off loopback (its net log "
                f"{browser.net_log}):\n  " + "\n  ".join(leaks),
                pytrace=False,
            )


# --- what both modules check, on either platform ----------------------------------------------
def experiment_url(ui: str, experiment_id: str) -> str:
    """An experiment page in the UI's training view (see TRAINING_VIEW)."""
    return f"{ui}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def run_url(ui: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run page: without a tab, exactly the link a trainer's summary prints."""
    if not tab:
        return run_link(ui, experiment_id, run_id)
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/{tab}?{TRAINING_VIEW}"


def check_experiments_list(browser: Browser, ui: str, names: list[str]) -> None:
    """The experiments list, as a fresh browser opens it, shows every trainer's experiment."""
    from selenium.webdriver.common.by import By

    with browser.page("experiments list", f"{ui}/#/experiments"):
        for name in names:
            browser.wait_for(
                lambda d, name=name: d.find_elements(By.XPATH, f"//a[normalize-space()='{name}']"),
                f"a link to experiment {name}",
            )
        browser.screenshot_for_docs("experiments.png")


def check_training_view(browser: Browser, ui: str, experiment_id: str, run_name: str) -> None:
    """The experiment opens on its training runs (Runs tab, the model registry in the sidebar),
    not on the GenAI overview (traces, judges, sessions)."""
    with browser.page("experiment page, training view", experiment_url(ui, experiment_id)):
        browser.wait_for(
            lambda d: f"/experiments/{experiment_id}/runs" in d.current_url,
            "the experiment's Runs tab",
        )
        text = browser.wait_for_text(run_name, "Model registry")
        for genai_only in ("Judges", "Sessions", "Playground"):
            assert genai_only not in text.split("\n"), (
                f"the GenAI navigation ({genai_only}) is showing: {text[:800]}"
            )


def check_run_page(
    browser: Browser, ui: str, experiment_id: str, run_id: str, params: dict[str, str],
    metrics: dict[str, float],
) -> None:  # fmt: skip
    """The run page lists the run's params and metrics, as the tracking server has them."""
    with browser.page("run page", run_url(ui, experiment_id, run_id)):
        text = browser.wait_for_text("Parameters", "Metrics", *params, *metrics)
        lines = text.split("\n")
        for key, value in params.items():
            assert value in lines[lines.index(key) + 1 :][:3], f"param {key}={value} not shown"
        for key, value in metrics.items():
            shown = lines[lines.index(key) + 1]
            assert abs(float(shown) - value) <= 1e-9 * max(1.0, abs(value)), (
                f"metric {key}: UI shows {shown}, server has {value}"
            )


def check_artifact_plot(
    browser: Browser, ui: str, experiment_id: str, run_id: str, plot: str, expected_sha256: str
) -> None:
    """The artifacts tab shows `plot` (e.g. plots/roc_curve.png): its bytes come through the
    tracking server's proxy (200, image/png) and are exactly the object in the bucket."""
    from selenium.webdriver.common.by import By

    folder, file_name = plot.rsplit("/", 1)
    with browser.page("artifacts tab", run_url(ui, experiment_id, run_id, "artifacts")):
        clicked = [0.0]

        def file_in_tree(driver: Any) -> Any:
            """The file's tree entry, opening its folder first (again, if a click came before the
            tree was ready)."""
            files = driver.find_elements(By.XPATH, f"//div[normalize-space(text())='{file_name}']")
            if files:
                return files[0]
            folders = driver.find_elements(By.XPATH, f"//div[normalize-space(text())='{folder}']")
            if folders and time.monotonic() - clicked[0] > 3:
                folders[0].click()
                clicked[0] = time.monotonic()
            return None

        browser.wait_for(file_in_tree, f"{file_name} in the artifact tree").click()
        image = browser.wait_for(
            lambda d: next(
                (
                    img
                    for img in d.find_elements(By.TAG_NAME, "img")
                    if d.execute_script(
                        "return arguments[0].complete && arguments[0].naturalWidth > 0 "
                        "&& arguments[0].src.startsWith('blob:')",
                        img,
                    )
                ),
                None,
            ),
            f"{file_name} displayed (an <img> with naturalWidth > 0)",
        )
        proxied = [
            r
            for r in browser.requests(r"/get-artifact\?|/ajax-api/2\.0/mlflow-artifacts/")
            if file_name in r.url
        ]
        assert proxied, f"no request for {file_name} through the tracking server's proxy"
        assert all(r.status == 200 and r.mime == "image/png" for r in proxied), [
            (r.describe(), r.mime) for r in proxied
        ]
        assert all(netloc(r.url) == netloc(ui) for r in proxied), "the plot came from elsewhere"
        assert browser.blob_sha256(image) == expected_sha256, (
            f"the displayed {plot} differs from the object in the bucket"
        )
        browser.screenshot_for_docs("run-page.png")


def check_registry_champion(
    browser: Browser, ui: str, model: str, versions: list[str], champion: str
) -> None:
    """The registered model page lists every version and shows @champion on `champion` only."""
    from selenium.webdriver.common.by import By

    chip = f"//span[normalize-space(translate(., '\u00a0', ' '))='@ {CHAMPION}']"
    with browser.page(f"registered model {model}", f"{ui}/#/models/{model}?{TRAINING_VIEW}"):
        browser.wait_for_text(*(f"Version {v}" for v in versions))
        rows = browser.wait_for(
            lambda d: d.find_elements(By.XPATH, f"//*[@role='row'][.{chip}]"),
            f"a version row with @{CHAMPION}",
        )
        shown = sorted(
            re.search(r"Version (\d+)", row.text).group(1)  # type: ignore[union-attr]
            for row in rows
        )
        assert shown == [champion], f"UI shows @{CHAMPION} on {shown}, registry on {champion}"
        browser.screenshot_for_docs("registry-champion.png")


def check_compare_runs(
    browser: Browser, ui: str, runs: dict[str, str], experiment_ids: list[str]
) -> None:
    """The comparison view of runs {run_id: run_name} renders both, side by side, with a plot."""
    from selenium.webdriver.common.by import By

    query = f"runs={json.dumps(list(runs))}&experiments={json.dumps(experiment_ids)}"
    with browser.page("compare runs", f"{ui}/#/compare-runs?{query.replace(' ', '')}"):
        browser.wait_for_text(
            f"Comparing {len(runs)} Runs", "Parameters", "Metrics", *runs, *runs.values()
        )
        browser.wait_for(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"),
            "the comparison plot",
        )


@dataclass
class TrainedRun:
    """A trainer's top run, as the tracking server (MlflowClient, not the UI) reports it."""

    model: str
    experiment_id: str
    experiment_tags: dict[str, str]
    run_id: str
    run_name: str
    params: dict[str, str]
    metrics: dict[str, float]


def trained_runs(tracking_uri: str, models: tuple[str, ...]) -> dict[str, list[TrainedRun]]:
    """{model: its top-level runs, oldest first} read through MlflowClient."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found: dict[str, list[TrainedRun]] = {}
    for model in models:
        experiment = client.get_experiment_by_name(model)
        assert experiment is not None, f"no experiment {model} on {tracking_uri}"
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
        )
        found[model] = [
            TrainedRun(
                model=model,
                experiment_id=experiment.experiment_id,
                experiment_tags=dict(experiment.tags),
                run_id=run.info.run_id,
                run_name=run.info.run_name,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
            )
            for run in runs
            if "mlflow.parentRunId" not in run.data.tags
        ]
        assert found[model], f"no finished run in experiment {model}"
    return found


def check_ui_telemetry_off(ui: str) -> None:
    """What the UI asks before it sends usage events: the server must say no."""
    import requests

    answer = requests.get(f"{ui}/ajax-api/3.0/mlflow/ui-telemetry", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json().get("disable_ui_telemetry") is True, answer.json()

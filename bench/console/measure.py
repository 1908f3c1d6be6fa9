"""Signs in to the console and times its pages: the server's own time for each request (the
Server-Timing header), p50 and p95 over N requests. Usage: measure.py BASE LOGIN PASSWORD N LABEL"""
import http.cookiejar
import random
import re
import statistics
import sys
import time
import urllib.parse
import urllib.request

base, login, password, count, label = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
page = opener.open(f"{base}/sign-in").read().decode()
csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
form = urllib.parse.urlencode({"login": login, "password": password, "csrf": csrf}).encode()
opener.open(urllib.request.Request(f"{base}/sign-in", data=form)).read()
tenants = re.findall(r'href="/tenants/([0-9a-f-]{36})"', opener.open(f"{base}/tenants?sort=calls&dir=desc").read().decode())
assert tenants, "signed in, with tenants listed"


def timed(path):
    started = time.perf_counter()
    response = opener.open(f"{base}{path}")
    response.read()
    wall = (time.perf_counter() - started) * 1000
    server = re.search(r"dur=([0-9.]+)", response.headers.get("Server-Timing", ""))
    assert response.status == 200, path
    return float(server.group(1)) if server else wall


def report(name, paths):
    timed(paths[0])  # warm
    samples = sorted(timed(p) for p in paths)
    p95 = samples[min(len(samples) - 1, int(round(0.95 * len(samples))) - 1)]
    print(f"{label:<11} {name:<34} n={len(samples):<4} p50 {statistics.median(samples):7.1f} ms   p95 {p95:7.1f} ms")


rng = random.Random(7)
report("tenants page (sorted by calls)", ["/tenants?sort=calls&dir=desc"] * count)
report("tenants page (filtered, by spend)", [f"/tenants?q=bench-{rng.randint(1, 999)}&sort=spend&dir=desc" for _ in range(count)])
report("tenant page", [f"/tenants/{rng.choice(tenants)}" for _ in range(count)])
report("tenant chart (90 days)", [f"/tenants/{rng.choice(tenants)}/usage.svg?days=90" for _ in range(count)])
report("finance page (this month)", ["/finance"] * max(5, count // 10))

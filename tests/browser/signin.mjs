// Signs in through Keycloak's real login page in Debian's headless Chromium and waits until
// cellxgene has drawn the dataset under the instance's path prefix. Driven by tests/test_signin.py.
//
// Usage: node signin.mjs '{"url": ..., "username": ..., "password": ..., "screenshot": ...,
//                          "chromium": "/usr/bin/chromium", "timeoutMs": 60000,
//                          "secureOrigins": ["http://10.0.0.1:8080"]}'   (secureOrigins optional)
// Prints one JSON object on stdout: what happened, every failed request and console error, so
// that pytest asserts on facts rather than on this script's opinion.
import { chromium } from "playwright-core";

const options = JSON.parse(process.argv[2]);
const timeout = options.timeoutMs ?? 60000;
// The flags this machine needs: no GPU, no sandbox as root, and nothing that phones home (the
// network is closed, and background connections would show up as failures).
const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
// Origins served over plain http on a test address (Keycloak on the real node's address) that
// must count as secure, as loopback does, or Chromium drops Keycloak's Secure cookies.
if (options.secureOrigins?.length) {
  args.push(`--unsafely-treat-insecure-origin-as-secure=${options.secureOrigins.join(",")}`);
}

const result = {
  steps: [],
  failedRequests: [], // transport failures: refused, aborted, blocked
  httpErrors: [], // responses with status >= 400
  consoleErrors: [],
  pageErrors: [],
};
const step = (name, extra = {}) => result.steps.push({ name, url: page?.url(), ...extra });

const browser = await chromium.launch({ executablePath: options.chromium, headless: true, args });
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("requestfailed", (r) => result.failedRequests.push({ url: r.url(), error: r.failure()?.errorText }));
  page.on("response", (r) => {
    if (r.status() >= 400) result.httpErrors.push({ url: r.url(), status: r.status() });
  });
  page.on("console", (m) => {
    if (m.type() === "error") result.consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));

  await page.goto(options.url);
  await page.waitForSelector("#kc-form-login");
  step("keycloak login page", { title: await page.title() });
  await page.fill("#username", options.username);
  await page.fill("#password", options.password);
  await Promise.all([page.waitForURL((u) => u.href.startsWith(options.url)), page.click("#kc-login")]);
  step("back at the instance");

  // cellxgene has loaded the schema and the data when the cell_type category is listed and the
  // embedding canvas is on the page; then wait for the network to settle before the screenshot.
  await page.waitForSelector('[data-testid="layout-graph"]');
  await page.waitForSelector('[data-testid="category-cell_type"]');
  await page.waitForLoadState("networkidle");
  step("dataset rendered", { title: await page.title() });
  result.canvas = await page.$eval('[data-testid="layout-graph"]', (el) => ({
    width: el.width ?? el.clientWidth,
    height: el.height ?? el.clientHeight,
  }));
  result.layoutChoice = (await page.textContent('[data-testid="layout-choice"]'))?.trim();
  result.categories = await page.$$eval('[data-testid^="category-"]', (els) =>
    els.map((el) => el.getAttribute("data-testid")),
  );
  // Every image the page shows (cellxgene's logo among them), with whether it really loaded.
  result.images = await page.$$eval("img", (els) =>
    els.map((el) => ({ src: el.currentSrc, alt: el.alt, loaded: el.complete && el.naturalWidth > 0 })),
  );
  result.cookies = (await context.cookies()).map((c) => ({ name: c.name, domain: c.domain, path: c.path }));
  result.finalUrl = page.url();
  await page.screenshot({ path: options.screenshot });
  result.ok = true;
} catch (error) {
  result.ok = false;
  result.error = String(error);
  result.finalUrl = page?.url();
  if (page) await page.screenshot({ path: options.screenshot }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

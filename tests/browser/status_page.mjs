// Loads the agent's status page in Debian's headless Chromium (playwright-core, no
// browser download) and prints what a person would see, as JSON, for
// tests/tests/status_page.rs to assert. Usage: node status_page.mjs URL SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root, in a closed network: no sandbox, no background connections.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  // launch() already starts Chromium on a new, empty profile directory.
});
try {
  // A phone: 390 x 844 CSS pixels, touch, 3x.
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("body[data-loaded]", { timeout: 15000 });
  await page.waitForSelector('.card[data-tenant="acme"] svg path.burn', { state: "attached", timeout: 15000 });
  const seen = await page.evaluate(() => {
    const cards = [...document.querySelectorAll("#series .card")].map((c) => ({
      slo: c.dataset.slo,
      tenant: c.dataset.tenant,
      badge: c.querySelector(".badge")?.textContent,
      budget: c.querySelector(".budget")?.textContent,
      bar_width: c.querySelector(".bar > div")?.style.width,
      alert: c.querySelector(".alert")?.textContent ?? null,
      sparklines: [...c.querySelectorAll(".spark")].map((s) => ({
        window: s.dataset.window,
        label: s.firstChild.textContent,
        points: Number(s.querySelector("svg")?.dataset.points ?? 0),
        path: s.querySelector("path.burn")?.getAttribute("d") ?? "",
        threshold: !!s.querySelector("line.threshold"),
        rendered_width: s.querySelector("svg")?.getBoundingClientRect().width ?? 0,
      })),
    }));
    return {
      meta: document.getElementById("meta").textContent,
      summary: document.getElementById("summary").textContent,
      cards,
      slos: [...document.querySelectorAll("#slos .card")].map((c) => c.textContent),
      probes: [...document.querySelectorAll("#probes li")].map((l) => l.textContent),
      page_width: document.documentElement.scrollWidth,
      viewport_width: window.innerWidth,
    };
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  seen.errors = errors;
  seen.requests = requests;
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

// Live progress: the analysis' Server-Sent Events (the API's stream, relayed by the dashboard)
// signal each status change and scored utterance; htmx then re-renders the results fragment on
// the server. The stream is closed on a terminal status so the browser does not reconnect.
const TERMINAL = ["succeeded", "failed", "canceled"];

document.addEventListener("DOMContentLoaded", () => {
  for (const target of document.querySelectorAll("[data-live-events]")) {
    const source = new EventSource(target.dataset.liveEvents);
    // Events come in bursts (a chunk of utterances at a time): one re-render per burst, shortly
    // after its first event, keeps the page current without a request per utterance.
    let pending = null;
    const refresh = () => {
      pending ??= setTimeout(() => {
        pending = null;
        htmx.trigger(target, "refresh");
      }, 500);
    };
    source.addEventListener("utterance", refresh);
    source.addEventListener("summary", refresh);
    source.addEventListener("status", (event) => {
      refresh();
      if (TERMINAL.includes(JSON.parse(event.data).status)) {
        source.close();
        // The fragment answers HX-Refresh once it sees the final status; should that request be
        // turned away (rate limit), keep asking until the page reloads.
        setInterval(() => htmx.trigger(target, "refresh"), 3000);
      }
    });
    window.addEventListener("pagehide", () => source.close());
  }
});

// Timestamps arrive in UTC (<time datetime data-local-time>); show them in the browser's zone and
// locale, keeping UTC in the tooltip.
const localTimes = (root) => {
  for (const element of root.querySelectorAll("time[data-local-time]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      element.textContent = when.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
    }
  }
};
document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:afterSwap", (event) => localTimes(event.target));

// The new-analysis form: a file over the server's limit is refused here, before uploading it;
// otherwise the button is disabled so a double click cannot upload and submit twice.
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-upload-form]")) {
    const input = form.querySelector("input[type=file][name=video_file]");
    const error = form.querySelector("[data-file-size-error]");
    const tooLarge = () => {
      const file = input.files[0];
      return file && file.size > Number(form.dataset.maxBytes) ? file : null;
    };
    const explain = () => {
      const file = tooLarge();
      error.hidden = !file;
      error.textContent = file ? `This file is ${humanSize(file.size)}; the limit is ${form.dataset.maxLabel}.` : "";
    };
    input.addEventListener("change", explain);
    form.addEventListener("submit", (event) => {
      if (tooLarge()) {
        event.preventDefault();
        explain();
        return;
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      button.textContent = "Uploading…";
    });
  }
});

// Decimal units, as the API's upload_too_large message words them (2 GB, 3.5 MB, 800 KB).
const humanSize = (size) => {
  for (const [unit, factor] of [["GB", 1e9], ["MB", 1e6], ["KB", 1e3]]) {
    if (size >= factor) return `${(size / factor).toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }
  return `${size} bytes`;
};

// The player on the result page: clicking an utterance card or the timeline plays from there, and
// the utterance under the playhead is highlighted (aria-current) while it plays. Cards and the
// timeline are looked up on every event because the live fragment replaces them.
document.addEventListener("DOMContentLoaded", () => {
  const player = document.querySelector("[data-player]");
  if (!player) return;
  const playFrom = (seconds) => {
    player.currentTime = Math.max(0, seconds);
    player.play().catch(() => {}); // refused autoplay leaves the player paused at that time
  };
  document.addEventListener("click", (event) => {
    if (event.target.closest("form, a, button, select, input")) return; // the label picker
    const card = event.target.closest("[data-utterance]");
    if (card) {
      playFrom(Number(card.dataset.start));
      return;
    }
    const timeline = event.target.closest("[data-seek-timeline]");
    if (timeline) {
      const box = timeline.getBoundingClientRect();
      playFrom(((event.clientX - box.left) / box.width) * Number(timeline.dataset.end));
    }
  });
  const follow = () => {
    const now = player.currentTime;
    for (const card of document.querySelectorAll("[data-utterance]")) {
      const playing = now >= Number(card.dataset.start) && now < Number(card.dataset.end);
      if (playing) card.setAttribute("aria-current", "true");
      else card.removeAttribute("aria-current");
    }
    const timeline = document.querySelector("[data-seek-timeline]");
    const playhead = timeline?.querySelector("[data-playhead]");
    if (playhead) {
      const x = (100 * now) / Number(timeline.dataset.end);
      playhead.setAttribute("x1", x);
      playhead.setAttribute("x2", x);
      playhead.setAttribute("visibility", "visible");
    }
  };
  for (const name of ["timeupdate", "seeked", "play"]) player.addEventListener(name, follow);
});

// Job status page: poll the JSON API once a second and show progress, keyframes as they are
// rendered, a live preview while an image or keyframe renders, and the image or a playable video
// when the job is done.
(function () {
  "use strict";
  var root = document.getElementById("job");
  var url = root.dataset.statusUrl;
  var ENDED = ["done", "failed", "cancelled"];
  var $ = function (id) { return document.getElementById(id); };

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.max(0, Math.round(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m ? m + " min " + s + " s" : s + " s";
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function showKeyframes(urls) {
    var box = $("keyframes");
    if (!box) return;
    for (var k = box.children.length; k < urls.length; k++) {
      var img = document.createElement("img");
      img.src = urls[k];
      img.alt = "keyframe " + k;
      img.title = "keyframe " + k;
      box.appendChild(img);
    }
  }

  function showResult(job) {
    var box = $("result");
    if (box.dataset.shown) return;
    box.dataset.shown = "1";
    var media;
    if ((job.result_type || "").indexOf("video/") === 0) {
      media = document.createElement("video");
      media.controls = true;
      media.loop = true;
      media.muted = true;
      media.playsInline = true;
      media.preload = "metadata";
    } else {
      media = document.createElement("img");
      media.alt = "result";
    }
    media.id = "result-media";
    media.src = job.result_url;
    box.appendChild(media);
    var downloads = $("downloads");
    downloads.appendChild(link(job.download_url, "Download the " + (job.kind === "zoom" ? "video" : "image")));
    if (job.gif_url) { downloads.appendChild(document.createTextNode(" · ")); downloads.appendChild(link(job.gif_url, "GIF")); }
    if (job.sidecar_url) { downloads.appendChild(document.createTextNode(" · ")); downloads.appendChild(link(job.sidecar_url, "Sidecar (JSON)")); }
  }

  // The preview: fetched when the job reports a new one, and at least every 5 s while it runs,
  // since asking for it is what keeps the worker making previews (it stops 10 s after the last).
  var preview = { seen: null, asked: 0, busy: false, objectUrl: null };

  function showPreview(job) {
    var box = $("preview");
    if (!box) return;
    if (!job.preview_url) {
      box.hidden = true;
      return;
    }
    var mark = (job.preview_piece || "") + ":" + (job.preview_step || "");
    var now = Date.now();
    if (preview.busy || (mark === preview.seen && now - preview.asked < 5000)) return;
    preview.busy = true;
    preview.asked = now;
    fetch(job.preview_url, { cache: "no-store" })
      .then(function (response) { return response.status === 200 ? response.blob() : null; })
      .then(function (blob) {
        preview.busy = false;
        if (!blob || root.dataset.state !== "running") return;
        preview.seen = mark;
        if (preview.objectUrl) URL.revokeObjectURL(preview.objectUrl);
        preview.objectUrl = URL.createObjectURL(blob);
        $("preview-image").src = preview.objectUrl;
        $("preview-caption").textContent = "Preview" + (job.preview_step ? " after step " + job.preview_step : "")
          + (job.preview_piece && job.preview_piece !== "image" ? " of " + job.preview_piece.replace(":", " ") : "");
        box.hidden = false;
      })
      .catch(function () { preview.busy = false; });
  }

  function render(job) {
    var percent = job.state === "done" ? 100 : Math.floor(job.progress * 100);
    $("progress").value = percent;
    $("percent").textContent = percent + " %";
    $("state").textContent = job.state;
    $("stage").textContent = job.stage || "";
    $("queue").textContent = job.queue_position || "–";
    $("eta").textContent = duration(job.eta_seconds);
    // A render shared with an idle worker (guidance split): with whom, and whether it ended alone.
    $("split-label").hidden = $("split").hidden = !job.split_with;
    if (job.split_with) {
      $("split").textContent = job.split_with + " (" + job.split_piece + ": guided steps shared, each worker running half)"
        + (job.split_note ? "; " + job.split_note : "");
    }
    $("warning").hidden = !job.warning;
    $("warning").textContent = job.warning || "";
    $("error").hidden = !job.error;
    $("error").textContent = job.error || "";
    root.dataset.state = job.state;
    showKeyframes(job.keyframe_urls || []);
    showPreview(job);
    if (ENDED.indexOf(job.state) >= 0) $("cancel-form").hidden = true;
    if (job.state === "done" && job.result_url) showResult(job);  // none once purged
  }

  function poll() {
    fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (job) {
        render(job);
        if (ENDED.indexOf(job.state) < 0) setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });  // the server restarting: keep trying
  }
  poll();
})();

// The DeOSS console's script: uploads with progress, and a few conveniences (confirmations,
// select all, copy). Pages work without it except for uploading. Bytes go to the S3 API
// with URLs the console presigns: a file up to data-single-max in one PutObject, a larger
// one in parts (CreateMultipartUpload, UploadPart, CompleteMultipartUpload), read from the
// disk a part at a time (File.slice), so no file is ever held whole in memory.
// Names are only ever set as text (textContent), never parsed as HTML.
"use strict";

(function () {
  const main = document.getElementById("main");
  const csrf = main ? main.dataset.csrf || "" : "";

  // ---- small conveniences ------------------------------------------------------------
  document.querySelectorAll("form.confirm[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  const selectAll = document.getElementById("select-all");
  if (selectAll) {
    selectAll.addEventListener("change", () => {
      document.querySelectorAll('#objects input[name="item"]').forEach((box) => {
        box.checked = selectAll.checked;
      });
    });
  }
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const said = document.getElementById("copied");
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch (e) {
        document.execCommand("copy");
      }
      if (said) said.textContent = "Copied.";
    });
  });

  const uploader = document.getElementById("uploader");
  if (!uploader) return;

  // ---- uploads -------------------------------------------------------------------------
  const bucket = uploader.dataset.bucket;
  const prefix = uploader.dataset.prefix;
  const singleMax = Number(uploader.dataset.singleMax);
  const basePartSize = Number(uploader.dataset.partSize);
  const presignUrl = uploader.dataset.presign;
  const progressUrl = uploader.dataset.progress;
  const list = document.getElementById("uploads");
  const uploads = new Set();

  // requests that hold one of the account's upload slots at the gateway, at most `parallel`
  let free = Number(uploader.dataset.parallel) || 3;
  const waiting = [];
  async function withSlot(work) {
    if (free > 0) free -= 1;
    else await new Promise((resolve) => waiting.push(resolve));
    try {
      return await work();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else free += 1;
    }
  }

  class Failure extends Error {}
  class Cancelled extends Error {}

  async function presign(body) {
    const answer = await fetch(presignUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(Object.assign({ bucket: bucket }, body)),
    });
    if (answer.status === 401) {
      window.location.assign("/console/signin?why=expired");
      throw new Failure("your session has ended: sign in again");
    }
    const data = await answer.json();
    if (!answer.ok) throw new Failure(data.message || "the console refused the upload");
    return data;
  }

  function xmlText(text, tag) {
    const doc = new DOMParser().parseFromString(text, "application/xml");
    const found = doc.getElementsByTagName(tag);
    return found.length ? found[0].textContent : null;
  }

  function s3Error(request) {
    const message = xmlText(request.responseText || "", "Message");
    const code = xmlText(request.responseText || "", "Code");
    return new Failure(message ? `${code}: ${message}` : `the gateway answered ${request.status}`);
  }

  function human(size) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = size;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  class Upload {
    constructor(file) {
      this.file = file;
      this.key = prefix + file.name;
      this.requests = new Set();
      this.sent = new Map();
      this.cancelled = false;
      this.uploadId = null;
      this.abortUrl = null;
      this.row = document.createElement("li");
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = `${this.key} (${human(file.size)})`;
      this.cancelButton = document.createElement("button");
      this.cancelButton.type = "button";
      this.cancelButton.textContent = "Cancel";
      this.cancelButton.setAttribute("aria-label", `Cancel the upload of ${this.key}`);
      this.cancelButton.addEventListener("click", () => this.cancel());
      this.bar = document.createElement("progress");
      this.bar.max = Math.max(file.size, 1);
      this.bar.value = 0;
      this.bar.setAttribute("aria-label", `Upload of ${this.key}`);
      this.status = document.createElement("span");
      this.status.className = "status";
      this.status.setAttribute("role", "status");
      this.frags = document.createElement("div");
      this.frags.className = "frags";
      this.row.append(name, this.cancelButton, this.bar, this.status, this.frags);
      this.row.dataset.key = this.key;
      list.append(this.row);
      this.setState("queued", "waiting");
    }

    setState(state, text) {
      this.state = state;
      this.row.className = state;
      this.row.dataset.state = state;
      this.status.textContent = text;
    }

    progress() {
      let total = 0;
      this.sent.forEach((value) => { total += value; });
      this.bar.value = total;
      if (this.state === "sending") {
        this.status.textContent = `sending ${Math.floor((100 * total) / Math.max(this.file.size, 1))}%`;
      }
    }

    // one request to the S3 API; resolves with the XMLHttpRequest once answered 2xx
    send(method, target, body, part) {
      return new Promise((resolve, reject) => {
        if (this.cancelled) { reject(new Cancelled()); return; }
        const request = new XMLHttpRequest();
        this.requests.add(request);
        request.open(method, target);
        if (method === "POST" && part === "create" && this.file.type) {
          request.setRequestHeader("Content-Type", this.file.type);
        }
        if (typeof part === "number") {
          request.upload.onprogress = (event) => { this.sent.set(part, event.loaded); this.progress(); };
          request.upload.onload = () => {
            this.sent.set(part, body.size);
            this.progress();
            if (part === 0) this.storing();
          };
        }
        request.onload = () => {
          this.requests.delete(request);
          if (request.status >= 200 && request.status < 300) resolve(request);
          else reject(Object.assign(s3Error(request), { status: request.status,
            retryAfter: Number(request.getResponseHeader("Retry-After")) || 0 }));
        };
        request.onerror = () => {
          this.requests.delete(request);
          reject(this.cancelled ? new Cancelled() : Object.assign(new Failure("the connection to the gateway failed"), { status: 0 }));
        };
        request.onabort = () => { this.requests.delete(request); reject(new Cancelled()); };
        request.send(body);
      });
    }

    // retried when the gateway is busy (503 SlowDown) or the connection broke
    async sendRetrying(method, target, body, part) {
      for (let attempt = 1; ; attempt += 1) {
        try {
          return await this.send(method, target, body, part);
        } catch (error) {
          const transient = error instanceof Failure && (error.status === 0 || error.status === 503);
          if (!transient || attempt >= 6 || this.cancelled) throw error;
          await sleep(1000 * Math.max(error.retryAfter || 0, 2 ** (attempt - 1)));
        }
      }
    }

    storing() {
      if (this.state !== "sending") return;
      this.setState("storing", "storing: encoding and sending fragments to the nodes");
      poller.start();
    }

    showFragments(item) {
      const label = { planning: "storing: hashing", declared: "storing: declared on the chain",
        uploading: "storing: sending fragments", reporting: "storing: nodes reporting to the chain" };
      if (this.state !== "storing") return;
      this.status.textContent = label[item.state] || `storing: ${item.state}`;
      if (!item.segments) return;
      this.frags.replaceChildren(...item.sent.map((count, column) => {
        const cell = document.createElement("span");
        cell.className = count >= item.segments ? "frag done" : "frag";
        cell.textContent = `${column}: ${count}/${item.segments}`;
        cell.title = `fragment ${column}: ${count} of ${item.segments} segments on its node`;
        return cell;
      }));
    }

    async run() {
      uploads.add(this);
      this.cancelButton.hidden = false;
      this.sent.clear();
      try {
        if (this.file.size <= singleMax) await this.runSingle();
        else await this.runMultipart();
        this.setState("stored", "stored");
        this.bar.value = this.bar.max;
        this.frags.replaceChildren();
        this.cancelButton.hidden = true;
        refreshListing();
      } catch (error) {
        if (error instanceof Cancelled || this.cancelled) {
          this.setState("cancelled", "cancelled");
        } else {
          this.setState("failed", `failed: ${error.message}`);
          this.offerRetry();
        }
        this.cancelButton.hidden = true;
      } finally {
        uploads.delete(this);
      }
    }

    async runSingle() {
      const { url } = await presign({ op: "put", key: this.key });
      this.setState("sending", "sending 0%");
      await withSlot(() => this.sendRetrying("PUT", url, this.file, 0));
    }

    async runMultipart() {
      const partSize = Math.max(basePartSize, Math.ceil(this.file.size / 10000 / 1048576) * 1048576);
      const count = Math.ceil(this.file.size / partSize);
      const created = await presign({ op: "create", key: this.key });
      const answer = await this.sendRetrying("POST", created.url, null, "create");
      this.uploadId = xmlText(answer.responseText, "UploadId");
      if (!this.uploadId) throw new Failure("the gateway did not start the multipart upload");
      this.abortUrl = (await presign({ op: "abort", key: this.key, upload_id: this.uploadId })).url;
      this.setState("sending", "sending 0%");
      const etags = new Array(count);
      const urls = new Map();
      let next = 1;
      const urlFor = async (number) => {
        if (!urls.has(number)) {
          const wanted = [];
          for (let n = number; n <= Math.min(count, number + 19); n += 1) wanted.push(n);
          const signed = await presign({ op: "parts", key: this.key, upload_id: this.uploadId, parts: wanted });
          Object.entries(signed.urls).forEach(([n, target]) => urls.set(Number(n), target));
        }
        return urls.get(number);
      };
      const worker = async () => {
        while (next <= count && !this.cancelled) {
          const number = next;
          next += 1;
          const start = (number - 1) * partSize;
          const slice = this.file.slice(start, Math.min(start + partSize, this.file.size));
          const target = await urlFor(number);
          const done = await withSlot(() => this.sendRetrying("PUT", target, slice, number));
          etags[number - 1] = done.getResponseHeader("ETag");
        }
      };
      const workers = [];
      for (let i = 0; i < Math.min(count, Number(uploader.dataset.parallel) || 3); i += 1) workers.push(worker());
      await Promise.all(workers);
      if (this.cancelled) throw new Cancelled();
      this.storing();
      const body = "<CompleteMultipartUpload>" + etags.map((etag, index) =>
        `<Part><PartNumber>${index + 1}</PartNumber><ETag>${etag}</ETag></Part>`).join("") +
        "</CompleteMultipartUpload>";
      const completion = await presign({ op: "complete", key: this.key, upload_id: this.uploadId });
      const result = await withSlot(() => this.sendRetrying("POST", completion.url, body, "complete"));
      if (xmlText(result.responseText, "Error") !== null) {
        throw new Failure(`${xmlText(result.responseText, "Code")}: ${xmlText(result.responseText, "Message")}`);
      }
      this.uploadId = null;
      this.abortUrl = null;
    }

    abortMultipart(keepalive) {
      if (!this.abortUrl) return;
      const target = this.abortUrl;
      this.abortUrl = null;
      this.uploadId = null;
      fetch(target, { method: "DELETE", keepalive: keepalive, credentials: "omit" }).catch(() => {});
    }

    cancel() {
      this.cancelled = true;
      this.requests.forEach((request) => request.abort());
      this.abortMultipart(false);
    }

    offerRetry() {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Retry";
      retry.setAttribute("aria-label", `Retry the upload of ${this.key}`);
      retry.addEventListener("click", () => {
        retry.remove();
        this.abortMultipart(false);
        this.cancelled = false;
        this.frags.replaceChildren();
        this.run();
      });
      this.status.after(retry);
    }
  }

  // what the gateway is storing for this bucket, while some file of ours is being stored
  const poller = {
    timer: null,
    start() { if (!this.timer) this.timer = setInterval(() => this.poll(), 700); },
    async poll() {
      const storing = [...uploads].filter((u) => u.state === "storing");
      if (!storing.length) { clearInterval(this.timer); this.timer = null; return; }
      try {
        const answer = await fetch(progressUrl, { credentials: "same-origin" });
        if (!answer.ok) return;
        const data = await answer.json();
        const byKey = new Map(data.uploads.map((item) => [item.key, item]));
        storing.forEach((u) => { if (byKey.has(u.key)) u.showFragments(byKey.get(u.key)); });
      } catch (e) { /* the next poll tries again */ }
    },
  };

  // the listing, fetched again once a file is stored (the server renders it, escaped)
  async function refreshListing() {
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin" });
      if (!answer.ok) return;
      const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = doc.getElementById("listing");
      const current = document.getElementById("listing");
      if (fresh && current) current.replaceWith(document.importNode(fresh, true));
      const box = document.getElementById("select-all");
      if (box) box.addEventListener("change", () => {
        document.querySelectorAll('#objects input[name="item"]').forEach((b) => { b.checked = box.checked; });
      });
    } catch (e) { /* the listing stays as it was */ }
  }

  function start(files) {
    [...files].forEach((file) => new Upload(file).run());
  }

  const input = document.getElementById("file-input");
  input.addEventListener("change", () => { start(input.files); input.value = ""; });
  const zone = document.getElementById("dropzone");
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) start(event.dataTransfer.files);
  });

  // a tab closed mid-upload leaves no partial object: its multipart uploads are aborted
  // (a request the browser sends even as the page goes; else they expire at the gateway)
  window.addEventListener("pagehide", () => {
    uploads.forEach((u) => { u.cancelled = true; u.abortMultipart(true); });
  });
})();

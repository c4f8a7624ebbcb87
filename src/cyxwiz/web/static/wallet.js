/* Wallet pages: Sign-In With Solana from a browser wallet or the built-in dev wallet, paying a
   deposit with the dev wallet through the chain's JSON-RPC, and a deposit's live status.
   Calls go to the UI's own routes with the page's CSRF token (never the bearer API). Every page
   also works without this file (paste a signature, "Check now"). */
(function () {
  "use strict";

  var ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  var MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr";
  var TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";
  var TRANSFER_CHECKED = 12;
  var POLL_MS = 2000;

  // ---------------------------------------------------------------- encodings

  function b58encode(bytes) {
    var zeros = 0;
    while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
    var digits = [];
    for (var i = zeros; i < bytes.length; i++) {
      var carry = bytes[i];
      for (var j = 0; j < digits.length; j++) {
        carry += digits[j] * 256;
        digits[j] = carry % 58;
        carry = Math.floor(carry / 58);
      }
      while (carry) { digits.push(carry % 58); carry = Math.floor(carry / 58); }
    }
    var out = "1".repeat(zeros);
    for (var k = digits.length - 1; k >= 0; k--) out += ALPHABET[digits[k]];
    return out;
  }

  function b58decode(text) {
    var zeros = 0;
    while (zeros < text.length && text[zeros] === "1") zeros++;
    var bytes = [];
    for (var i = zeros; i < text.length; i++) {
      var carry = ALPHABET.indexOf(text[i]);
      if (carry < 0) throw new Error("not base58: " + text);
      for (var j = 0; j < bytes.length; j++) {
        carry += bytes[j] * 58;
        bytes[j] = carry & 0xff;
        carry >>= 8;
      }
      while (carry) { bytes.push(carry & 0xff); carry >>= 8; }
    }
    var out = new Uint8Array(zeros + bytes.length);
    for (var k = 0; k < bytes.length; k++) out[zeros + k] = bytes[bytes.length - 1 - k];
    return out;
  }

  function b64encode(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s);
  }

  function b64decode(text) {
    var s = atob(text);
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function utf8(text) { return new TextEncoder().encode(text); }

  // ---------------------------------------------------------------- server calls

  function csrfToken() {
    var input = document.querySelector("input[name=csrf_token]");
    return input ? input.value : "";
  }

  function post(url, fields) {
    var body = new URLSearchParams(fields || {});
    body.set("csrf_token", csrfToken());
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) throw new Error(data.detail || data.title || "request failed (" + r.status + ")");
        return data;
      });
    });
  }

  function rpc(url, method, params) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: method, params: params || [] })
    }).then(function (r) { return r.json(); }).then(function (data) {
      if (data.error) throw new Error(data.error.message || "RPC error " + data.error.code);
      return data.result;
    });
  }

  // ---------------------------------------------------------------- the dev wallet

  function storeKey(user) { return "cyxwiz.devWallet." + user; }

  function loadDevWallet(user) {
    var raw = localStorage.getItem(storeKey(user));
    if (!raw) return Promise.resolve(null);
    var saved = JSON.parse(raw);
    return crypto.subtle
      .importKey("pkcs8", b64decode(saved.pkcs8), { name: "Ed25519" }, false, ["sign"])
      .then(function (key) { return { address: saved.address, key: key }; });
  }

  function createDevWallet(user) {
    var pair;
    return crypto.subtle
      .generateKey({ name: "Ed25519" }, true, ["sign", "verify"])
      .then(function (p) {
        pair = p;
        return Promise.all([
          crypto.subtle.exportKey("pkcs8", p.privateKey),
          crypto.subtle.exportKey("raw", p.publicKey)
        ]);
      })
      .then(function (exported) {
        var address = b58encode(new Uint8Array(exported[1]));
        localStorage.setItem(
          storeKey(user),
          JSON.stringify({ address: address, pkcs8: b64encode(new Uint8Array(exported[0])) })
        );
        return { address: address, key: pair.privateKey };
      });
  }

  function devWallet(user) {
    return loadDevWallet(user).then(function (w) { return w || createDevWallet(user); });
  }

  function devSign(wallet, bytes) {
    return crypto.subtle.sign({ name: "Ed25519" }, wallet.key, bytes).then(function (sig) {
      return new Uint8Array(sig);
    });
  }

  function devWalletSupported() {
    return !!(window.crypto && crypto.subtle && window.localStorage && window.TextEncoder);
  }

  // ---------------------------------------------------------------- linking (Sign-In With Solana)

  function link(address, signMessage, label) {
    return post("/wallet/challenge", { address: address })
      .then(function (challenge) {
        return signMessage(utf8(challenge.message)).then(function (signature) {
          return post("/wallet/link", {
            message: challenge.message,
            signature: b58encode(signature),
            label: label
          });
        });
      })
      .then(function () { window.location.assign("/wallet"); });
  }

  function extensionProvider() {
    if (window.phantom && window.phantom.solana) return window.phantom.solana;
    if (window.solana && typeof window.solana.signMessage === "function") return window.solana;
    return null;
  }

  function setupWalletPage(root) {
    var status = root.querySelector("[data-wallet-status]");
    var user = root.getAttribute("data-user");
    var linked = JSON.parse(root.getAttribute("data-linked") || "[]");
    function say(text, isError) {
      if (!status) return;
      status.textContent = text;
      status.classList.toggle("is-error", !!isError);
    }
    function fail(err) { say(err.message || String(err), true); }

    var provider = extensionProvider();
    var ext = root.querySelector("[data-extension]");
    if (provider && ext) {
      ext.hidden = false;
      ext.querySelector("[data-connect-extension]").addEventListener("click", function () {
        say("Approve the connection and the message in your wallet…");
        provider.connect().then(function (resp) {
          var address = (resp && resp.publicKey ? resp.publicKey : provider.publicKey).toString();
          return link(address, function (bytes) {
            return provider.signMessage(bytes, "utf8").then(function (out) {
              return out && out.signature ? out.signature : out;
            });
          }, "browser wallet");
        }).catch(fail);
      });
    }

    var dev = root.querySelector("[data-dev-wallet]");
    if (!dev) return;
    var shown = dev.querySelector("[data-dev-address]");
    var button = dev.querySelector("[data-connect-dev]");
    if (!devWalletSupported()) {
      shown.textContent = "This browser cannot run the dev wallet (WebCrypto Ed25519 needs a secure context).";
      return;
    }
    button.hidden = false;
    loadDevWallet(user).then(function (w) {
      if (!w) return;
      shown.textContent = w.address;
      if (linked.indexOf(w.address) >= 0) {
        button.textContent = "Dev wallet linked";
        button.disabled = true;
      }
    }).catch(fail);
    button.addEventListener("click", function () {
      button.disabled = true;
      say("Signing in with the dev wallet…");
      devWallet(user).then(function (w) {
        shown.textContent = w.address;
        return link(w.address, function (bytes) { return devSign(w, bytes); }, "dev wallet");
      }).catch(function (err) { button.disabled = false; fail(err); });
    });
  }

  // ---------------------------------------------------------------- a Solana Pay transfer

  function compactU16(n) {
    var out = [];
    for (;;) {
      var byte = n & 0x7f;
      n >>= 7;
      if (n === 0) { out.push(byte); return out; }
      out.push(byte | 0x80);
    }
  }

  function u64le(value) {
    var out = [];
    var v = BigInt(value);
    for (var i = 0; i < 8; i++) { out.push(Number(v & 0xffn)); v >>= 8n; }
    return out;
  }

  function toUnits(text, decimals) {
    var parts = String(text).split(".");
    var frac = parts[1] || "";
    if (frac.length > decimals || !/^\d+$/.test(parts[0]) || !/^\d*$/.test(frac)) {
      throw new Error("bad amount " + text);
    }
    return BigInt(parts[0] + frac.padEnd(decimals, "0"));
  }

  function parsePayUrl(url) {
    var m = /^solana:([1-9A-HJ-NP-Za-km-z]+)(?:\?(.*))?$/.exec(url);
    if (!m) throw new Error("not a Solana Pay link");
    var q = new URLSearchParams(m[2] || "");
    return {
      recipient: m[1],
      amount: q.get("amount"),
      mint: q.get("spl-token"),
      references: q.getAll("reference"),
      memo: q.get("memo")
    };
  }

  // A legacy message: header, account keys (signer first, then writable, then read-only
  // non-signers), recent blockhash, instructions (Memo, then SPL Token transferChecked with the
  // references appended as read-only keys, as Solana Pay wallets do).
  function transferMessage(o) {
    var keys = [o.payer, o.source, o.destination, o.mint].concat(o.references);
    if (o.memo) keys.push(MEMO_PROGRAM);
    keys.push(TOKEN_PROGRAM);
    var readonlyUnsigned = keys.length - 3;
    function index(key) { return keys.indexOf(key); }
    var bytes = [1, 0, readonlyUnsigned].concat(compactU16(keys.length));
    keys.forEach(function (k) {
      var raw = b58decode(k);
      if (raw.length !== 32) throw new Error("bad address " + k);
      bytes = bytes.concat(Array.from(raw));
    });
    var hash = b58decode(o.blockhash);
    if (hash.length !== 32) throw new Error("bad blockhash");
    bytes = bytes.concat(Array.from(hash));
    var ixs = [];
    if (o.memo) ixs.push({ program: index(MEMO_PROGRAM), accounts: [], data: Array.from(utf8(o.memo)) });
    ixs.push({
      program: index(TOKEN_PROGRAM),
      accounts: [index(o.source), index(o.mint), index(o.destination), index(o.payer)]
        .concat(o.references.map(index)),
      data: [TRANSFER_CHECKED].concat(u64le(o.amount), [o.decimals])
    });
    bytes = bytes.concat(compactU16(ixs.length));
    ixs.forEach(function (ix) {
      bytes = bytes.concat([ix.program], compactU16(ix.accounts.length), ix.accounts,
        compactU16(ix.data.length), ix.data);
    });
    return new Uint8Array(bytes);
  }

  function payWithDevWallet(box, user, onSent) {
    var status = box.querySelector("[data-pay-status]");
    var rpcUrl = box.getAttribute("data-rpc");
    var atas = JSON.parse(box.getAttribute("data-atas") || "{}");
    var req = parsePayUrl(box.getAttribute("data-url"));
    var decimals = parseInt(box.getAttribute("data-decimals"), 10);
    var wallet;
    status.classList.remove("is-error");
    status.textContent = "Signing with the dev wallet…";
    return loadDevWallet(user).then(function (w) {
      if (!w) throw new Error("No dev wallet in this browser: connect it on the Wallet page first.");
      if (!atas[w.address]) throw new Error("Link the dev wallet " + w.address + " on the Wallet page first.");
      wallet = w;
      return rpc(rpcUrl, "getLatestBlockhash", [{ commitment: "confirmed" }]);
    }).then(function (latest) {
      var message = transferMessage({
        payer: wallet.address,
        source: atas[wallet.address],
        destination: box.getAttribute("data-vault"),
        mint: req.mint,
        references: req.references,
        memo: req.memo,
        amount: toUnits(req.amount, decimals),
        decimals: decimals,
        blockhash: latest.value.blockhash
      });
      return devSign(wallet, message).then(function (signature) {
        var tx = new Uint8Array(1 + 64 + message.length);
        tx[0] = 1;
        tx.set(signature, 1);
        tx.set(message, 65);
        return rpc(rpcUrl, "sendTransaction", [b64encode(tx), { encoding: "base64" }]);
      });
    }).then(function (signature) {
      status.textContent = "Sent: " + signature;
      onSent();
    }).catch(function (err) {
      status.textContent = err.message || String(err);
      status.classList.add("is-error");
    });
  }

  // ---------------------------------------------------------------- a deposit's live status

  function setupDeposit(root) {
    var id = root.getAttribute("data-deposit");
    var user = root.getAttribute("data-user");
    var live = root.querySelector("[data-live]");
    var timer = null;
    var started = Date.now();

    function show(d) {
      var set = function (name, text) {
        root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) { el.textContent = text; });
      };
      set("status", d.status);
      set("status_label", d.status_label);
      set("requested", d.requested.display);
      set("credited", d.credited.display);
      set("pending", d.pending.display);
      root.querySelectorAll('[data-field="status"]').forEach(function (el) {
        el.className = "badge deposit-" + d.status;
      });
      var body = root.querySelector("[data-credits]");
      body.textContent = "";
      (d.transactions || []).forEach(function (c) {
        var tr = document.createElement("tr");
        [[c.signature, "mono small signature"], [c.status, ""], [c.display, "num nowrap"]].forEach(function (cell) {
          var td = document.createElement("td");
          td.textContent = cell[0];
          if (cell[1]) td.className = cell[1];
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      root.querySelector("[data-no-credits]").hidden = (d.transactions || []).length > 0;
      var payButton = root.querySelector("[data-pay-dev]");
      if (payButton && d.status !== "open" && d.status !== "partial") payButton.hidden = true;
    }

    var busy = false;
    function poll() {
      if (busy) return;
      busy = true;
      post("/deposit/" + id + "/scan").then(function (d) {
        show(d);
        if (d.final || Date.now() - started > 30 * 60 * 1000) stop();
      }).catch(function () { /* the next tick retries */ }).then(function () { busy = false; });
    }
    function start() {
      if (timer) return;
      if (live) live.hidden = false;
      timer = setInterval(poll, POLL_MS);
    }
    function stop() {
      if (timer) clearInterval(timer);
      timer = null;
      if (live) live.hidden = true;
    }

    if (root.getAttribute("data-final") !== "true") start();

    var box = root.querySelector("[data-dev-pay]");
    if (box && devWalletSupported()) {
      var button = box.querySelector("[data-pay-dev]");
      button.hidden = false;
      button.addEventListener("click", function () {
        button.disabled = true;
        payWithDevWallet(box, user, function () { poll(); start(); }).then(function () {
          button.disabled = false;
        });
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.querySelector("[data-wallet-page]");
    if (page) setupWalletPage(page);
    var deposit = document.querySelector("[data-deposit]");
    if (deposit) setupDeposit(deposit);
  });

  // For tests and the console.
  window.cyxwizWallet = { b58encode: b58encode, b58decode: b58decode, transferMessage: transferMessage };
})();

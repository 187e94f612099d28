-- oflua.crypto against published test vectors (RFC 4231, RFC 5869, the GCM
-- specification, FIPS 180-2, RFC 4648) and HMAC values computed by the openssl
-- CLI (spec/fixtures/hmac_openssl.txt).
local crypto = require("oflua.crypto")
local h = require("spec.helper")

local hex, unhex = crypto.hex, crypto.unhex

local function bytes(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = string.char(i) end
  return table.concat(t)
end

describe("oflua.crypto", function()
  it("keeps the OpenSSL version in the module table", function()
    assert.matches("^OpenSSL 3", crypto.openssl_version)
  end)

  describe("hmac", function()
    -- RFC 4231 section 4: HMAC-SHA-256 and HMAC-SHA-512, test cases 1-7.
    local cases = {
      { key = ("\x0b"):rep(20), data = "Hi There",
        sha256 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        sha512 = "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde" ..
          "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854" },
      { key = "Jefe", data = "what do ya want for nothing?",
        sha256 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        sha512 = "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554" ..
          "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737" },
      { key = ("\xaa"):rep(20), data = ("\xdd"):rep(50),
        sha256 = "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        sha512 = "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39" ..
          "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb" },
      { key = bytes(1, 25), data = ("\xcd"):rep(50),
        sha256 = "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        sha512 = "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db" ..
          "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd" },
      { key = ("\x0c"):rep(20), data = "Test With Truncation", truncate = 16,
        sha256 = "a3b6167473100ee06e0c796c2955552b",
        sha512 = "415fad6271580a531d4179bc891d87a6" },
      { key = ("\xaa"):rep(131), data = "Test Using Larger Than Block-Size Key - Hash Key First",
        sha256 = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        sha512 = "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352" ..
          "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598" },
      { key = ("\xaa"):rep(131),
        data = "This is a test using a larger than block-size key and a larger than block-size " ..
          "data. The key needs to be hashed before being used by the HMAC algorithm.",
        sha256 = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        sha512 = "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944" ..
          "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58" },
    }
    for i, c in ipairs(cases) do
      for _, alg in ipairs({ "sha256", "sha512" }) do
        it(("matches RFC 4231 test case %d for %s"):format(i, alg), function()
          local mac = crypto.hmac(alg, c.key, c.data)
          assert.equal(alg == "sha256" and 32 or 64, #mac)
          if c.truncate then mac = mac:sub(1, c.truncate) end
          assert.equal(c[alg], hex(mac))
        end)
      end
    end

    it("matches every value computed with openssl dgst -hmac (spec/fixtures)", function()
      local n = 0
      for line in io.lines(h.source_dir .. "/spec/fixtures/hmac_openssl.txt") do
        if not line:match("^#") then
          local alg, key, data, mac = line:match("^(%S+) (%x*) (%x*) (%x+)$")
          assert.is_not_nil(alg, "bad fixture line: " .. line)
          assert.equal(mac, hex(crypto.hmac(alg, unhex(key), unhex(data))), line)
          n = n + 1
        end
      end
      assert.equal(18, n)
    end)

    it("computes SHA-1 HMAC (RFC 2202 test case 2)", function()
      assert.equal("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        hex(crypto.hmac("sha1", "Jefe", "what do ya want for nothing?")))
    end)

    it("accepts empty keys and data", function()
      assert.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
        hex(crypto.hmac("sha256", "", "")))
    end)

    it("raises on an unknown algorithm or non-string arguments", function()
      assert.has_error(function() crypto.hmac("md5", "k", "d") end)
      assert.has_error(function() crypto.hmac("sha256", nil, "d") end)
      assert.has_error(function() crypto.hmac("sha256", "k", {}) end)
      local ok, err = pcall(crypto.hmac, "sha3", "k", "d")
      assert.is_false(ok)
      assert.matches("unsupported digest 'sha3'", err)
    end)
  end)

  describe("sha256", function()
    it("matches the FIPS 180-2 examples", function()
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        hex(crypto.sha256("abc")))
      assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        hex(crypto.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        hex(crypto.sha256("")))
    end)

    it("hashes a million 'a's", function()
      assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        hex(crypto.sha256(("a"):rep(1000000))))
    end)

    it("raises on a non-string", function()
      assert.has_error(function() crypto.sha256(nil) end)
    end)
  end)

  describe("equal", function()
    it("compares byte strings", function()
      assert.is_true(crypto.equal("", ""))
      assert.is_true(crypto.equal("abc\0def", "abc\0def"))
      assert.is_false(crypto.equal("abc\0def", "abc\0deg"))
      assert.is_false(crypto.equal("xbc", "abc"))
    end)

    it("is false for different lengths, even when one is a prefix", function()
      assert.is_false(crypto.equal("abc", "abcd"))
      assert.is_false(crypto.equal("abcd", "abc"))
      assert.is_false(crypto.equal("", "a"))
    end)

    it("raises on non-strings", function()
      assert.has_error(function() crypto.equal("a", nil) end)
      assert.has_error(function() crypto.equal({}, "a") end)
    end)
  end)

  describe("random", function()
    it("returns n bytes that differ between calls", function()
      assert.equal("", crypto.random(0))
      local a, b = crypto.random(32), crypto.random(32)
      assert.equal(32, #a)
      assert.not_equal(a, b)
      assert.equal(1048576, #crypto.random(1048576))
    end)

    it("raises on a negative, fractional or huge count", function()
      assert.has_error(function() crypto.random(-1) end)
      assert.has_error(function() crypto.random(1.5) end)
      assert.has_error(function() crypto.random(1048577) end)
      assert.has_error(function() crypto.random("x") end)
    end)
  end)

  describe("hex", function()
    it("encodes lower case and decodes either case (RFC 4648 base16)", function()
      assert.equal("666f6f626172", hex("foobar"))
      assert.equal("foobar", unhex("666F6F626172"))
      assert.equal("", hex(""))
      assert.equal("", unhex(""))
      assert.equal(bytes(0, 255), unhex(hex(bytes(0, 255))))
    end)

    it("returns nil and a message for bad input", function()
      for _, bad in ipairs({ "abc", "zz", "0g", " 00", "00 ", "0x00" }) do
        local v, err = unhex(bad)
        assert.is_nil(v, bad)
        assert.matches("^invalid hex", err)
      end
    end)
  end)

  describe("base64", function()
    -- RFC 4648 section 10
    local vectors = { { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
      { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" } }

    it("matches the RFC 4648 vectors both ways", function()
      for _, v in ipairs(vectors) do
        assert.equal(v[2], crypto.base64(v[1]))
        assert.equal(v[1], crypto.unbase64(v[2]))
      end
    end)

    it("round-trips every byte value and length", function()
      local all = bytes(0, 255)
      for n = 0, 40 do
        local s = all:sub(1, n) .. all:sub(200)
        assert.equal(s, crypto.unbase64(crypto.base64(s)))
        assert.equal(s, crypto.unbase64url(crypto.base64url(s)))
      end
    end)

    it("uses + and / (standard) or - and _ (url, unpadded)", function()
      assert.equal("+/+/", crypto.base64("\xfb\xff\xbf"))
      assert.equal("-_-_", crypto.base64url("\xfb\xff\xbf"))
      assert.equal("Zm8", crypto.base64url("fo"))
      assert.equal("fo", crypto.unbase64url("Zm8"))
      assert.equal("fo", crypto.unbase64url("Zm8="))
    end)

    it("rejects whitespace, bad characters, bad padding and non-zero trailing bits", function()
      local bad = { "Zg=", "Zg", "Z===", "Zm9v\n", " Zm9v", "Zm 9v", "Zm9v====", "Zg==Zg==",
        "Z=g=", "Zm8*", "Zh==", "Zm9=", "-_-_", "=", "Zm9vYg=", "Zm9vY" }
      for _, s in ipairs(bad) do
        local v, err = crypto.unbase64(s)
        assert.is_nil(v, s)
        assert.matches("^invalid base64", err, 1, false)
      end
      for _, s in ipairs({ "+/+/", "Zm8==", "Z", "Zm9vY", "Zh", "Zm9v\n", "Zg=" }) do
        local v, err = crypto.unbase64url(s)
        assert.is_nil(v, s)
        assert.matches("^invalid base64", err)
      end
    end)

    it("raises on non-strings", function()
      assert.has_error(function() crypto.base64(nil) end)
      assert.has_error(function() crypto.unbase64({}) end)
    end)
  end)

  describe("aead (AES-256-GCM)", function()
    -- The GCM specification (McGrew and Viega), test cases 13-16 (256-bit key).
    local K15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
    local P15 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" ..
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
    local C15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa" ..
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
    local gcm = {
      { n = 13, key = ("00"):rep(32), iv = ("00"):rep(12), pt = "", aad = "", ct = "",
        tag = "530f8afbc74536b9a963b4f1c4cb738b" },
      { n = 14, key = ("00"):rep(32), iv = ("00"):rep(12), pt = ("00"):rep(16), aad = "",
        ct = "cea7403d4d606b6e074ec5d3baf39d18", tag = "d0d1c8a799996bf0265b98b5d48ab919" },
      { n = 15, key = K15, iv = "cafebabefacedbaddecaf888", pt = P15, aad = "", ct = C15,
        tag = "b094dac5d93471bdec1a502270e3cc6c" },
      { n = 16, key = K15, iv = "cafebabefacedbaddecaf888", pt = P15:sub(1, 120),
        aad = "feedfacedeadbeeffeedfacedeadbeefabaddad2", ct = C15:sub(1, 120),
        tag = "76fc6ece0f4e1768cddf8853bb2d551b" },
    }
    -- Known answers need the vector's nonce: aead_seal_with_nonce (tests only).
    for _, v in ipairs(gcm) do
      it(("matches GCM test case %d"):format(v.n), function()
        local key, iv, pt, aad = unhex(v.key), unhex(v.iv), unhex(v.pt), unhex(v.aad)
        local sealed = crypto.aead_seal_with_nonce(key, iv, pt, aad)
        assert.equal(v.iv .. v.ct .. v.tag, hex(sealed))
        assert.equal(pt, crypto.aead_open(key, sealed, aad))
      end)
    end

    local key = unhex(K15)
    local sealed = crypto.aead_seal(key, "attack at dawn", "row 1")

    it("draws a fresh random nonce for every seal and puts it in front", function()
      local seen = {}
      for _ = 1, 200 do
        local s = crypto.aead_seal(key, "same plaintext", "row 1")
        assert.equal(12 + #"same plaintext" + 16, #s)
        local nonce = s:sub(1, 12)
        assert.is_nil(seen[nonce])
        seen[nonce] = true
        assert.equal("same plaintext", crypto.aead_open(key, s, "row 1"))
      end
      -- the nonce in front is the one the data was sealed with
      local s = crypto.aead_seal(key, "x")
      assert.equal(s, crypto.aead_seal_with_nonce(key, s:sub(1, 12), "x"))
    end)

    it("treats a missing AAD as empty", function()
      local a = crypto.aead_seal(key, "x")
      assert.equal("x", crypto.aead_open(key, a))
      assert.equal("x", crypto.aead_open(key, a, ""))
      local n = ("\1"):rep(12)
      assert.equal(crypto.aead_seal_with_nonce(key, n, "x"), crypto.aead_seal_with_nonce(key, n, "x", ""))
    end)

    local function assert_fails(v, err)
      assert.is_nil(v)
      assert.equal("authentication failed", err)
    end

    it("fails with a wrong key, nonce or AAD", function()
      local other_key = key:sub(1, 31) .. "\0"
      assert_fails(crypto.aead_open(other_key, sealed, "row 1"))
      assert_fails(crypto.aead_open(key, ("\0"):rep(12) .. sealed:sub(13), "row 1"))
      assert_fails(crypto.aead_open(key, sealed, "row 2"))
      assert_fails(crypto.aead_open(key, sealed))
    end)

    it("fails when any single bit of nonce, ciphertext or tag is flipped", function()
      for i = 1, #sealed do
        for bit = 0, 7 do
          local b = sealed:byte(i) ~ (1 << bit)
          local bad = sealed:sub(1, i - 1) .. string.char(b) .. sealed:sub(i + 1)
          assert_fails(crypto.aead_open(key, bad, "row 1"))
        end
      end
    end)

    it("fails on truncated or extended input", function()
      assert_fails(crypto.aead_open(key, sealed:sub(1, -2), "row 1"))
      assert_fails(crypto.aead_open(key, sealed .. "\0", "row 1"))
      assert_fails(crypto.aead_open(key, sealed:sub(1, 27), "row 1"))
      assert_fails(crypto.aead_open(key, "", "row 1"))
    end)

    it("raises on wrong key or nonce sizes and non-strings", function()
      assert.has_error(function() crypto.aead_seal(key:sub(2), "x") end,
        "bad argument #1 to 'aead_seal' (key must be 32 bytes)")
      assert.has_error(function() crypto.aead_seal_with_nonce(key, ("n"):rep(13), "x") end,
        "bad argument #2 to 'aead_seal_with_nonce' (nonce must be 12 bytes)")
      assert.has_error(function() crypto.aead_open(key, nil) end)
      assert.has_error(function() crypto.aead_seal(key, "x", 5 > 4) end)
      assert.has_error(function() crypto.aead_seal(key, nil) end)
    end)
  end)

  describe("hkdf", function()
    -- RFC 5869 appendix A, test cases 1-7.
    local ikm22, salt13, info10 = ("\x0b"):rep(22), bytes(0, 12), bytes(0xf0, 0xf9)
    local long_ikm, long_salt, long_info = bytes(0, 0x4f), bytes(0x60, 0xaf), bytes(0xb0, 0xff)
    local cases = {
      { 1, "sha256", ikm22, salt13, info10, 42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865" },
      { 2, "sha256", long_ikm, long_salt, long_info, 82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c" ..
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71" ..
        "cc30c58179ec3e87c14c01d5c1f3434f1d87" },
      { 3, "sha256", ikm22, "", "", 42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8" },
      { 4, "sha1", ("\x0b"):rep(11), salt13, info10, 42,
        "085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896" },
      { 5, "sha1", long_ikm, long_salt, long_info, 82,
        "0bd770a74d1160f7c9f12cd5912a06ebff6adcae899d92191fe4305673ba2ffe" ..
        "8fa3f1a4e5ad79f3f334b3b202b2173c486ea37ce3d397ed034c7f9dfeb15c5e" ..
        "927336d0441f4c4300e2cff0d0900b52d3b4" },
      { 6, "sha1", ikm22, "", "", 42,
        "0ac1af7002b3d761d1e55298da9d0506b9ae52057220a306e07b6b87e8df21d0ea00033de03984d34918" },
      { 7, "sha1", ("\x0c"):rep(22), nil, "", 42,
        "2c91117204d745f3500d636a62f64f0ab3bae548aa53d423b0d1f27ebba6f5e5673a081d70cce7acfc48" },
    }
    for _, c in ipairs(cases) do
      it(("matches RFC 5869 test case %d"):format(c[1]), function()
        assert.equal(c[7], hex(crypto.hkdf(c[2], c[3], c[4], c[5], c[6])))
      end)
    end

    it("treats nil salt and info as empty", function()
      assert.equal(crypto.hkdf("sha512", "ikm", "", "", 64), crypto.hkdf("sha512", "ikm", nil, nil, 64))
    end)

    it("raises on a length outside 1..255*HashLen or an unknown digest", function()
      assert.has_error(function() crypto.hkdf("sha256", "k", "", "", 0) end)
      assert.has_error(function() crypto.hkdf("sha256", "k", "", "", 255 * 32 + 1) end)
      assert.equal(255 * 32, #crypto.hkdf("sha256", "k", "", "", 255 * 32))
      assert.has_error(function() crypto.hkdf("md5", "k", "", "", 16) end)
      assert.has_error(function() crypto.hkdf("sha256", nil, "", "", 16) end)
    end)
  end)
end)

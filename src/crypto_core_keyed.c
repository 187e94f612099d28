/*
 * crypto_core_keyed.c: the keyed contexts of crypto_core.h. An AES-256-GCM
 * key keeps one encryption and one decryption EVP_CIPHER_CTX with the key
 * schedule done; each message only sets a new nonce. An HMAC key keeps an
 * EVP_MAC_CTX initialised with its key; each message re-initialises it with
 * no key, which OpenSSL 3 defines as "reuse the key already set".
 * Kept apart from crypto_core.c so the one-shot functions stay simple; both
 * follow the same rules (only non-deprecated APIs, lengths checked against
 * INT_MAX, plaintext wiped when authentication fails).
 */
#include "crypto_core.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

struct ofc_aead_key {
  EVP_CIPHER_CTX *enc, *dec;
};

struct ofc_hmac_key {
  EVP_MAC_CTX *ctx;
  size_t mdlen;
};

static const unsigned char empty[1] = {0};

ofc_aead_key *ofc_aead_key_new(const unsigned char key[OFC_AEAD_KEY_LEN]) {
  ofc_aead_key *k = calloc(1, sizeof *k);
  EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  if (k == NULL || c == NULL) goto fail;
  size_t ivlen = OFC_AEAD_NONCE_LEN;
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, &ivlen);
  params[1] = OSSL_PARAM_construct_end();
  k->enc = EVP_CIPHER_CTX_new();
  k->dec = EVP_CIPHER_CTX_new();
  if (k->enc == NULL || k->dec == NULL ||
      EVP_EncryptInit_ex2(k->enc, c, NULL, NULL, params) != 1 ||
      EVP_EncryptInit_ex2(k->enc, NULL, key, NULL, NULL) != 1 ||
      EVP_DecryptInit_ex2(k->dec, c, NULL, NULL, params) != 1 ||
      EVP_DecryptInit_ex2(k->dec, NULL, key, NULL, NULL) != 1)
    goto fail;
  EVP_CIPHER_free(c); /* the contexts hold their own references */
  return k;
fail:
  EVP_CIPHER_free(c);
  ofc_aead_key_free(k);
  return NULL;
}

void ofc_aead_key_free(ofc_aead_key *k) {
  if (k == NULL) return;
  EVP_CIPHER_CTX_free(k->enc); /* frees (and clears) the key schedule */
  EVP_CIPHER_CTX_free(k->dec);
  free(k);
}

static int set_tag(EVP_CIPHER_CTX *ctx, unsigned char *tag, int get) {
  OSSL_PARAM tp[2];
  tp[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, OFC_AEAD_TAG_LEN);
  tp[1] = OSSL_PARAM_construct_end();
  return get ? EVP_CIPHER_CTX_get_params(ctx, tp) : EVP_CIPHER_CTX_set_params(ctx, tp);
}

int ofc_aead_key_seal(ofc_aead_key *k, const unsigned char *nonce, const void *pt, size_t ptlen,
                      const void *aad, size_t aadlen, unsigned char *out) {
  if (k == NULL || ptlen > INT_MAX || aadlen > INT_MAX) return -1;
  int n = 0;
  if (EVP_EncryptInit_ex2(k->enc, NULL, NULL, nonce, NULL) != 1) return -1;
  if (aadlen > 0 && EVP_EncryptUpdate(k->enc, NULL, &n, aad, (int)aadlen) != 1) return -1;
  n = 0;
  if (ptlen > 0 && EVP_EncryptUpdate(k->enc, out, &n, pt, (int)ptlen) != 1) return -1;
  int m = 0;
  if (EVP_EncryptFinal_ex(k->enc, out + n, &m) != 1) return -1;
  return set_tag(k->enc, out + ptlen, 1) == 1 ? 0 : -1;
}

int ofc_aead_key_open(ofc_aead_key *k, const unsigned char *nonce, const void *ct, size_t ctlen,
                      const void *aad, size_t aadlen, unsigned char *out) {
  if (k == NULL || ctlen < OFC_AEAD_TAG_LEN || ctlen > INT_MAX || aadlen > INT_MAX) return -1;
  size_t len = ctlen - OFC_AEAD_TAG_LEN;
  unsigned char tag[OFC_AEAD_TAG_LEN];
  memcpy(tag, (const unsigned char *)ct + len, OFC_AEAD_TAG_LEN);
  int n = 0, m = 0, ok = 0;
  if (EVP_DecryptInit_ex2(k->dec, NULL, NULL, nonce, NULL) != 1) goto done;
  if (aadlen > 0 && EVP_DecryptUpdate(k->dec, NULL, &n, aad, (int)aadlen) != 1) goto done;
  n = 0;
  if (len > 0 && EVP_DecryptUpdate(k->dec, out, &n, ct, (int)len) != 1) goto done;
  if (set_tag(k->dec, tag, 0) != 1) goto done;
  ok = EVP_DecryptFinal_ex(k->dec, out + n, &m) == 1;
done:
  if (!ok) ofc_cleanse(out, len); /* never hand back unauthenticated plaintext */
  return ok ? 0 : -1;
}

ofc_hmac_key *ofc_hmac_key_new(const char *alg, const void *key, size_t keylen) {
  size_t mdlen = ofc_md_len(alg);
  if (mdlen == 0) return NULL;
  ofc_hmac_key *k = calloc(1, sizeof *k);
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (k == NULL || mac == NULL) goto fail;
  k->mdlen = mdlen;
  k->ctx = EVP_MAC_CTX_new(mac);
  const char *name = strcmp(alg, "sha256") == 0 ? "SHA256"
                     : strcmp(alg, "sha512") == 0 ? "SHA512"
                                                  : "SHA1";
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)name, 0);
  params[1] = OSSL_PARAM_construct_end();
  if (k->ctx == NULL || EVP_MAC_init(k->ctx, keylen ? key : empty, keylen, params) != 1)
    goto fail;
  EVP_MAC_free(mac);
  return k;
fail:
  EVP_MAC_free(mac);
  ofc_hmac_key_free(k);
  return NULL;
}

int ofc_hmac_key_mac(ofc_hmac_key *k, const void *data, size_t len, unsigned char *out,
                     size_t *outlen) {
  if (k == NULL) return -1;
  size_t n = 0;
  if (EVP_MAC_init(k->ctx, NULL, 0, NULL) != 1 ||
      EVP_MAC_update(k->ctx, len ? data : empty, len) != 1 ||
      EVP_MAC_final(k->ctx, out, &n, k->mdlen) != 1 || n != k->mdlen)
    return -1;
  if (outlen != NULL) *outlen = n;
  return 0;
}

int ofc_hmac_key_mac_parts(ofc_hmac_key *k, const void *const *parts, const size_t *lens, size_t n,
                           unsigned char *out, size_t *outlen) {
  if (k == NULL) return -1;
  size_t m = 0;
  if (EVP_MAC_init(k->ctx, NULL, 0, NULL) != 1) return -1;
  for (size_t i = 0; i < n; i++)
    if (lens[i] > 0 && EVP_MAC_update(k->ctx, parts[i], lens[i]) != 1) return -1;
  if (EVP_MAC_final(k->ctx, out, &m, k->mdlen) != 1 || m != k->mdlen) return -1;
  if (outlen != NULL) *outlen = m;
  return 0;
}

void ofc_hmac_key_free(ofc_hmac_key *k) {
  if (k == NULL) return;
  EVP_MAC_CTX_free(k->ctx); /* clears the key */
  free(k);
}

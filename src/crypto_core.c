/*
 * crypto_core.c: OpenSSL 3 EVP/MAC/KDF calls behind the small interface of
 * crypto_core.h. Only non-deprecated APIs; every context is freed on every
 * path. Lengths are checked against INT_MAX where OpenSSL takes an int.
 *
 * The algorithm objects (HMAC, SHA-*, AES-256-GCM, HKDF) are fetched once per
 * process and kept: an explicit fetch per call walks OpenSSL's provider store
 * under a lock, which costs more than hashing a webhook body. Fetched objects
 * are immutable and safe to share between threads; they stay referenced for
 * the life of the process (reachable from these statics, so not a leak).
 */
#include "crypto_core.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

static struct {
  EVP_MAC *hmac;
  EVP_MD *sha1, *sha256, *sha512;
  EVP_CIPHER *aes256gcm;
  EVP_KDF *hkdf;
} algs;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;

/* A failed fetch leaves a NULL pointer and every function using it fails
 * cleanly with -1. */
static void algs_fetch(void) {
  algs.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  algs.sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
  algs.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
  algs.sha512 = EVP_MD_fetch(NULL, "SHA512", NULL);
  algs.aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  algs.hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

static void algs_init(void) {
  pthread_once(&algs_once, algs_fetch);
}

size_t ofc_md_len(const char *alg) {
  if (alg == NULL) return 0;
  if (strcmp(alg, "sha256") == 0) return 32;
  if (strcmp(alg, "sha512") == 0) return 64;
  if (strcmp(alg, "sha1") == 0) return 20;
  return 0;
}

/* OpenSSL's name for a supported alg (checked by ofc_md_len first). */
static const char *ossl_md_name(const char *alg) {
  if (strcmp(alg, "sha256") == 0) return "SHA256";
  if (strcmp(alg, "sha512") == 0) return "SHA512";
  return "SHA1";
}

static const unsigned char empty[1] = {0};

int ofc_hmac(const char *alg, const void *key, size_t keylen, const void *data, size_t len,
             unsigned char *out, size_t *outlen) {
  size_t mdlen = ofc_md_len(alg);
  if (mdlen == 0) return -1;
  algs_init();
  if (algs.hmac == NULL) return -1;
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(algs.hmac);
  if (ctx == NULL) return -1;
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)ossl_md_name(alg),
                                               0);
  params[1] = OSSL_PARAM_construct_end();
  size_t n = 0;
  int ok = EVP_MAC_init(ctx, keylen ? key : empty, keylen, params) == 1 &&
           EVP_MAC_update(ctx, len ? data : empty, len) == 1 &&
           EVP_MAC_final(ctx, out, &n, mdlen) == 1 && n == mdlen;
  EVP_MAC_CTX_free(ctx);
  if (!ok) return -1;
  if (outlen != NULL) *outlen = n;
  return 0;
}

int ofc_sha256(const void *data, size_t len, unsigned char out[32]) {
  algs_init();
  if (algs.sha256 == NULL) return -1;
  unsigned int n = 0;
  return EVP_Digest(len ? data : empty, len, out, &n, algs.sha256, NULL) == 1 && n == 32 ? 0
                                                                                          : -1;
}

int ofc_random(void *buf, size_t n) {
  if (n == 0) return 0;
  if (n > INT_MAX) return -1;
  return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

void ofc_cleanse(void *p, size_t n) {
  if (p != NULL && n > 0) OPENSSL_cleanse(p, n);
}

static int gcm(int enc, const unsigned char *key, const unsigned char *nonce, const void *in,
               size_t inlen, const void *aad, size_t aadlen, unsigned char *out,
               unsigned char *tag) {
  if (inlen > INT_MAX || aadlen > INT_MAX) return -1;
  algs_init();
  if (algs.aes256gcm == NULL) return -1;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL) return -1;
  int ok = 0, n = 0;
  size_t ivlen = OFC_AEAD_NONCE_LEN;
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, &ivlen);
  params[1] = OSSL_PARAM_construct_end();
  /* 12 bytes is GCM's default IV length; set it anyway so a change of
   * OFC_AEAD_NONCE_LEN cannot silently disagree with the cipher. */
  if (EVP_CipherInit_ex2(ctx, algs.aes256gcm, NULL, NULL, enc, params) != 1) goto done;
  if (EVP_CipherInit_ex2(ctx, NULL, key, nonce, enc, NULL) != 1) goto done;
  if (aadlen > 0 && EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1) goto done;
  if (inlen > 0 && EVP_CipherUpdate(ctx, out, &n, in, (int)inlen) != 1) goto done;
  if (!enc) {
    OSSL_PARAM tp[2];
    tp[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, OFC_AEAD_TAG_LEN);
    tp[1] = OSSL_PARAM_construct_end();
    if (EVP_CIPHER_CTX_set_params(ctx, tp) != 1) goto done;
  }
  if (EVP_CipherFinal_ex(ctx, out + (inlen > 0 ? (size_t)n : 0), &n) != 1) goto done;
  if (enc) {
    OSSL_PARAM tp[2];
    tp[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, OFC_AEAD_TAG_LEN);
    tp[1] = OSSL_PARAM_construct_end();
    if (EVP_CIPHER_CTX_get_params(ctx, tp) != 1) goto done;
  }
  ok = 1;
done:
  EVP_CIPHER_CTX_free(ctx);
  return ok ? 0 : -1;
}

int ofc_aead_seal(const unsigned char *key, const unsigned char *nonce, const void *pt,
                  size_t ptlen, const void *aad, size_t aadlen, unsigned char *out) {
  return gcm(1, key, nonce, pt, ptlen, aad, aadlen, out, out + ptlen);
}

int ofc_aead_open(const unsigned char *key, const unsigned char *nonce, const void *ct,
                  size_t ctlen, const void *aad, size_t aadlen, unsigned char *out) {
  if (ctlen < OFC_AEAD_TAG_LEN) return -1;
  size_t n = ctlen - OFC_AEAD_TAG_LEN;
  unsigned char tag[OFC_AEAD_TAG_LEN];
  memcpy(tag, (const unsigned char *)ct + n, OFC_AEAD_TAG_LEN);
  if (gcm(0, key, nonce, ct, n, aad, aadlen, out, tag) != 0) {
    ofc_cleanse(out, n); /* never hand back unauthenticated plaintext */
    return -1;
  }
  return 0;
}

int ofc_hkdf(const char *alg, const void *ikm, size_t ikmlen, const void *salt, size_t saltlen,
             const void *info, size_t infolen, unsigned char *out, size_t outlen) {
  size_t mdlen = ofc_md_len(alg);
  if (mdlen == 0 || outlen == 0 || outlen > 255 * mdlen) return -1;
  algs_init();
  if (algs.hkdf == NULL) return -1;
  EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(algs.hkdf);
  if (ctx == NULL) return -1;
  OSSL_PARAM params[5], *p = params;
  *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)ossl_md_name(alg), 0);
  *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikmlen ? (void *)ikm : (void *)empty,
                                           ikmlen);
  /* An absent salt means HashLen zero bytes (RFC 5869 2.2); OpenSSL does
   * that when the parameter is left out. */
  if (saltlen > 0)
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
  if (infolen > 0)
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
  *p = OSSL_PARAM_construct_end();
  int ok = EVP_KDF_derive(ctx, out, outlen, params) == 1;
  EVP_KDF_CTX_free(ctx);
  return ok ? 0 : -1;
}

/*
 * crypto_core.c: OpenSSL 3 EVP/MAC/KDF calls behind the small interface of
 * crypto_core.h. Only non-deprecated APIs; every context is freed on every
 * path. Lengths are checked against INT_MAX where OpenSSL takes an int.
 */
#include "crypto_core.h"

#include <limits.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

size_t ofc_md_len(const char *alg) {
  if (alg == NULL) return 0;
  if (strcmp(alg, "sha256") == 0) return 32;
  if (strcmp(alg, "sha512") == 0) return 64;
  if (strcmp(alg, "sha1") == 0) return 20;
  return 0;
}

static const char *ossl_md_name(const char *alg) {
  if (strcmp(alg, "sha256") == 0) return "SHA256";
  if (strcmp(alg, "sha512") == 0) return "SHA512";
  return "SHA1";
}

static const EVP_MD *md_of(const char *alg) {
  if (strcmp(alg, "sha256") == 0) return EVP_sha256();
  if (strcmp(alg, "sha512") == 0) return EVP_sha512();
  return EVP_sha1();
}

int ofc_hmac(const char *alg, const void *key, size_t keylen, const void *data, size_t len,
             unsigned char *out, size_t *outlen) {
  size_t mdlen = ofc_md_len(alg);
  if (mdlen == 0 || keylen > INT_MAX) return -1;
  static const unsigned char empty[1] = {0};
  unsigned int n = 0;
  /* The one-shot HMAC() is not deprecated in OpenSSL 3 (only HMAC_CTX is). */
  if (HMAC(md_of(alg), keylen ? key : empty, (int)keylen, len ? data : empty, len, out, &n) ==
          NULL ||
      n != mdlen)
    return -1;
  if (outlen != NULL) *outlen = n;
  return 0;
}

int ofc_sha256(const void *data, size_t len, unsigned char out[32]) {
  unsigned int n = 0;
  static const unsigned char empty[1] = {0};
  return EVP_Digest(len ? data : empty, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0
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
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL) return -1;
  int ok = 0, n = 0;
  if (EVP_CipherInit_ex2(ctx, EVP_aes_256_gcm(), NULL, NULL, enc, NULL) != 1) goto done;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, OFC_AEAD_NONCE_LEN, NULL) != 1) goto done;
  if (EVP_CipherInit_ex2(ctx, NULL, key, nonce, enc, NULL) != 1) goto done;
  if (aadlen > 0 && EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1) goto done;
  if (inlen > 0 && EVP_CipherUpdate(ctx, out, &n, in, (int)inlen) != 1) goto done;
  if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, OFC_AEAD_TAG_LEN, tag) != 1)
    goto done;
  if (EVP_CipherFinal_ex(ctx, out + (inlen > 0 ? (size_t)n : 0), &n) != 1) goto done;
  if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, OFC_AEAD_TAG_LEN, tag) != 1)
    goto done;
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
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
  EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  int ok = 0;
  if (ctx != NULL) {
    static unsigned char empty[1] = {0};
    OSSL_PARAM params[5], *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)ossl_md_name(alg), 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                             ikmlen ? (void *)ikm : empty, ikmlen);
    if (saltlen > 0)
      *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    if (infolen > 0)
      *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    *p = OSSL_PARAM_construct_end();
    ok = EVP_KDF_derive(ctx, out, outlen, params) == 1;
  }
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  return ok ? 0 : -1;
}

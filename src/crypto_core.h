/*
 * crypto_core.h: the OpenSSL 3 primitives shared by oflua.crypto (the Lua
 * module) and oflua.store (which seals every row), written once here.
 * All functions return 0 on success and -1 on failure; nothing is printed.
 */
#ifndef OFLUA_CRYPTO_CORE_H
#define OFLUA_CRYPTO_CORE_H

#include <stddef.h>

#define OFC_AEAD_KEY_LEN 32   /* AES-256-GCM */
#define OFC_AEAD_NONCE_LEN 12 /* 96-bit nonce */
#define OFC_AEAD_TAG_LEN 16
#define OFC_MAX_MD_LEN 64     /* SHA-512 */

/* Digest name ("sha256", "sha512", "sha1") -> its output length, or 0 if not
 * supported. */
size_t ofc_md_len(const char *alg);

/* HMAC with digest alg; out must hold ofc_md_len(alg) bytes. */
int ofc_hmac(const char *alg, const void *key, size_t keylen, const void *data, size_t len,
             unsigned char *out, size_t *outlen);

/* SHA-256 of data into out[32]. */
int ofc_sha256(const void *data, size_t len, unsigned char out[32]);

/* Cryptographically secure random bytes. */
int ofc_random(void *buf, size_t n);

/* AES-256-GCM. seal writes ptlen bytes of ciphertext followed by the 16-byte
 * tag into out (room for ptlen + OFC_AEAD_TAG_LEN). open takes that layout and
 * writes ctlen - 16 bytes into out; -1 on any authentication failure, in which
 * case out is wiped. */
int ofc_aead_seal(const unsigned char *key, const unsigned char *nonce, const void *pt,
                  size_t ptlen, const void *aad, size_t aadlen, unsigned char *out);
int ofc_aead_open(const unsigned char *key, const unsigned char *nonce, const void *ct,
                  size_t ctlen, const void *aad, size_t aadlen, unsigned char *out);

/* HKDF (RFC 5869) extract-and-expand with digest alg into out[outlen]. */
int ofc_hkdf(const char *alg, const void *ikm, size_t ikmlen, const void *salt, size_t saltlen,
             const void *info, size_t infolen, unsigned char *out, size_t outlen);

/* Wipe memory that held secrets. */
void ofc_cleanse(void *p, size_t n);

/* Keyed contexts (src/crypto_core_keyed.c), for a caller that uses one key
 * for many messages, as oflua.store does for every row: the algorithm lookup
 * and the key schedule happen once in _new instead of on every call, which
 * makes a small seal or HMAC several times cheaper. Same output as the
 * one-shot functions above. A context is used by one thread at a time; _free
 * (NULL allowed) wipes the key material. */
typedef struct ofc_aead_key ofc_aead_key;
ofc_aead_key *ofc_aead_key_new(const unsigned char key[OFC_AEAD_KEY_LEN]);
int ofc_aead_key_seal(ofc_aead_key *k, const unsigned char *nonce, const void *pt, size_t ptlen,
                      const void *aad, size_t aadlen, unsigned char *out);
int ofc_aead_key_open(ofc_aead_key *k, const unsigned char *nonce, const void *ct, size_t ctlen,
                      const void *aad, size_t aadlen, unsigned char *out);
void ofc_aead_key_free(ofc_aead_key *k);

typedef struct ofc_hmac_key ofc_hmac_key;
ofc_hmac_key *ofc_hmac_key_new(const char *alg, const void *key, size_t keylen);
int ofc_hmac_key_mac(ofc_hmac_key *k, const void *data, size_t len, unsigned char *out,
                     size_t *outlen);
void ofc_hmac_key_free(ofc_hmac_key *k);

/* Encodings (src/crypto_codec.c). hex: out holds 2 * len bytes, lower case.
 * base64: url = 0 for RFC 4648 section 4 (padded), 1 for section 5 (no
 * padding on output; on input padding optional but exact). _encode writes
 * ofc_base64_len(len, url) bytes. _decode is strict; out holds len / 4 * 3 + 3
 * bytes; NULL on success with *outlen set, else a static message (for "bad
 * character" and "padding inside the data", *badpos is the 1-based position
 * when badpos is not NULL). */
void ofc_hex_encode(const void *in, size_t len, char *out);
size_t ofc_base64_len(size_t len, int url);
size_t ofc_base64_encode(const void *in, size_t len, int url, char *out);
const char *ofc_base64_decode(const char *in, size_t len, int url, unsigned char *out,
                              size_t *outlen, size_t *badpos);

/* HMAC of the concatenation of n parts (no copy of the parts). */
int ofc_hmac_key_mac_parts(ofc_hmac_key *k, const void *const *parts, const size_t *lens, size_t n,
                           unsigned char *out, size_t *outlen);

#endif

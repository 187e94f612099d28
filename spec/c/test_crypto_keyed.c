/* The keyed contexts of crypto_core.h (used by oflua.store for every row)
 * give exactly the output of the one-shot functions, reject any altered
 * byte, and can be reused across messages of every length. */
#include "crypto_core.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

int main(void) {
  unsigned char key[32], nonce[12], pt[600], aad[90], a[700], b[700], back[600];
  unsigned char m1[64], m2[64];
  CHECK(ofc_random(key, sizeof key) == 0);
  ofc_aead_key *k = ofc_aead_key_new(key);
  ofc_hmac_key *h256 = ofc_hmac_key_new("sha256", key, sizeof key);
  ofc_hmac_key *h512 = ofc_hmac_key_new("sha512", key, 7);
  CHECK(k != NULL && h256 != NULL && h512 != NULL);
  CHECK(ofc_hmac_key_new("md5", key, 32) == NULL);
  if (k == NULL || h256 == NULL || h512 == NULL) return 1;
  for (int it = 0; it < 1500; it++) {
    size_t n = (size_t)(it * 7 % 600), an = (size_t)(it % 90);
    CHECK(ofc_random(nonce, sizeof nonce) == 0);
    CHECK(ofc_random(pt, n) == 0);
    CHECK(ofc_random(aad, an) == 0);
    CHECK(ofc_aead_seal(key, nonce, pt, n, aad, an, a) == 0);
    CHECK(ofc_aead_key_seal(k, nonce, pt, n, aad, an, b) == 0);
    CHECK(memcmp(a, b, n + OFC_AEAD_TAG_LEN) == 0);
    CHECK(ofc_aead_key_open(k, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) == 0);
    CHECK(memcmp(back, pt, n) == 0);
    CHECK(ofc_aead_open(key, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) == 0);
    /* one flipped bit anywhere in ciphertext or tag, or in the AAD or nonce */
    size_t pos = (size_t)it % (n + OFC_AEAD_TAG_LEN);
    b[pos] ^= 0x20;
    CHECK(ofc_aead_key_open(k, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) != 0);
    b[pos] ^= 0x20;
    nonce[it % 12] ^= 1;
    CHECK(ofc_aead_key_open(k, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) != 0);
    nonce[it % 12] ^= 1;
    if (an > 0) {
      aad[it % an] ^= 1;
      CHECK(ofc_aead_key_open(k, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) != 0);
      aad[it % an] ^= 1;
    }
    /* and the context still works after a failure */
    CHECK(ofc_aead_key_open(k, nonce, b, n + OFC_AEAD_TAG_LEN, aad, an, back) == 0);
    size_t l1 = 0, l2 = 0;
    CHECK(ofc_hmac("sha256", key, sizeof key, pt, n, m1, &l1) == 0);
    CHECK(ofc_hmac_key_mac(h256, pt, n, m2, &l2) == 0);
    CHECK(l1 == 32 && l2 == 32 && memcmp(m1, m2, 32) == 0);
    CHECK(ofc_hmac("sha512", key, 7, pt, n, m1, &l1) == 0);
    CHECK(ofc_hmac_key_mac(h512, pt, n, m2, &l2) == 0);
    CHECK(l1 == 64 && l2 == 64 && memcmp(m1, m2, 64) == 0);
  }
  CHECK(ofc_aead_key_open(k, nonce, a, OFC_AEAD_TAG_LEN - 1, NULL, 0, back) != 0);
  CHECK(ofc_aead_key_seal(NULL, nonce, pt, 1, NULL, 0, a) != 0);
  ofc_aead_key_free(k);
  ofc_hmac_key_free(h256);
  ofc_hmac_key_free(h512);
  ofc_aead_key_free(NULL);
  ofc_hmac_key_free(NULL);
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures != 0;
}

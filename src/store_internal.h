/*
 * store_internal.h: what store_api.c (the Lua-facing oflua.store) and
 * store_seal.c (keys and sealing) share: the handle, the key pair derived
 * for one key id, the AAD / blind-index input and the sealing functions.
 * Backends see none of this (store_backend.h is their whole world).
 */
#ifndef OFLUA_STORE_INTERNAL_H
#define OFLUA_STORE_INTERNAL_H

#include "crypto_core.h"
#include "store_backend.h"

#include <stddef.h>
#include <stdint.h>

#define STORE_FORMAT 1 /* the sealing format (AAD layout, HKDF info strings) */
#define KEY_LEN 32
#define SALT_LEN STORE_SALT_LEN
#define IDX_LEN STORE_IDX_LEN
#define NONCE_LEN OFC_AEAD_NONCE_LEN
#define BOX_OVERHEAD (OFC_AEAD_NONCE_LEN + OFC_AEAD_TAG_LEN)
#define MAX_NS STORE_MAX_NS
#define MAX_KEY 4096 /* keys and event ids: identifiers, not documents */
#define AAD_MAX (4 * 4 + 64 + MAX_NS + MAX_KEY)
#define CHECK_TEXT "oflua.store key check v1"
#define CHECK_BOX_LEN (sizeof CHECK_TEXT - 1 + BOX_OVERHEAD)

/* Domains of the AADs and blind indexes: one per kind of sealed field. */
#define D_KV_INDEX "oflua.store/kv/index"
#define D_KV_KEY "oflua.store/kv/key"
#define D_KV_VALUE "oflua.store/kv/value"
#define D_IN_INDEX "oflua.store/inbox/index"
#define D_IN_ID "oflua.store/inbox/id"
#define D_IN_PAYLOAD "oflua.store/inbox/payload"
#define D_IN_REASON "oflua.store/inbox/reason"
#define D_CHECK "oflua.store/check"

/* The two keys derived for one key id, as keyed contexts. */
typedef struct {
  ofc_aead_key *aead;  /* AES-256-GCM data key: seals keys, values, ids, payloads */
  ofc_hmac_key *index; /* HMAC-SHA256 blind-index key */
} store_keys;

#define NONCE_POOL (NONCE_LEN * 128)

typedef struct {
  store_conn *c; /* NULL once closed */
  const store_backend *be;
  int64_t kid;
  int ready; /* meta row read and keys derived (PostgreSQL: on first use) */
  int create;
  int utx;   /* depth of s:transaction() calls */
  unsigned wseq; /* bumped by every key/value write: list() batches read before it are dropped */
  size_t nslen;
  store_keys keys; /* for kid */
  unsigned char master[KEY_LEN]; /* kept only until ready, then wiped */
  unsigned char salt[SALT_LEN];
  /* Random nonces are drawn from the CSPRNG in batches (one call costs as much
   * as sealing a small value); the pool is refilled after fork(). */
  size_t pool_pos;
  unsigned pool_gen;
  unsigned char pool[NONCE_POOL];
  char ns[MAX_NS + 1];
  /* Group commit (store_group.c): the options to open the committer's own
   * connection (db: a malloc'd copy of the path or URL, wiped on close), and
   * the group once used, for key id group_kid. */
  char *db;
  store_open_opts gopts;
  struct store_group *group;
  int64_t group_kid;
  double claim_sql_at; /* monotonic time of this handle's last grouped claim that read the inbox */
} store_handle;

/* Length-prefixed concatenation: the AAD of a box and the input of a blind
 * index. Prefixes make (ns="a", key="bc") and (ns="ab", key="c") differ. */
typedef struct {
  size_t len;
  unsigned char b[AAD_MAX];
} store_aad;

/* domain, namespace[, item]: callers check item length <= MAX_KEY. */
const store_aad *store_aad_make(store_aad *a, const char *ns, size_t nslen, const char *domain,
                                const void *item, size_t n);
const store_aad *store_check_aad(store_aad *a, int64_t kid, const unsigned char *salt);

void store_keys_free(store_keys *k);
/* HKDF-SHA256(master, salt, info naming the key id) -> the data and index keys. */
int store_derive(const unsigned char *master, const unsigned char *salt, int64_t kid,
                 store_keys *k);
int store_blind(ofc_hmac_key *k, const store_aad *a, unsigned char out[IDX_LEN]);
/* out: room for n + BOX_OVERHEAD bytes: nonce || ciphertext || tag. */
int store_seal(store_handle *s, ofc_aead_key *k, const void *pt, size_t n, const store_aad *a,
               unsigned char *out);
/* out: room for boxlen - BOX_OVERHEAD bytes. */
int store_unseal(ofc_aead_key *k, const void *box, size_t boxlen, const store_aad *a,
                 unsigned char *out);
void store_fork_watch(void);

/* The master key's text form: base64 of exactly 32 bytes. */
#define KEY_FORMAT_MSG "the store key must be the base64 text of exactly 32 bytes (oflua store keygen)"
void store_b64_encode(const unsigned char *in, size_t n, char *out);
int store_decode_key(const char *text, size_t n, unsigned char key[KEY_LEN]);
/* Reads a 0600 key file: 0, or -1 with a message (no key text) in err. */
int store_read_key_file(const char *path, unsigned char key[KEY_LEN], char *err, size_t errlen);
/* Writes a new 0600 key file: 0, or -1 with a message in err. */
int store_write_key_file(const char *path, const unsigned char key[KEY_LEN], char *err,
                         size_t errlen);

#endif

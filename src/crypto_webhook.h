/* crypto_webhook.h: the native webhook verifier (crypto_webhook.c). */
#ifndef OFLUA_CRYPTO_WEBHOOK_H
#define OFLUA_CRYPTO_WEBHOOK_H

#include <lua.h>

/* Adds webhook_svix, webhook_checklist and webhook_max_signatures to the
 * table on the top of the stack (oflua.crypto). */
void ofc_webhook_register(lua_State *L);

#endif

--- Every OFAuth endpoint, as data.
--
-- One entry per typed endpoint of the official SDKs v3.0.0 (126), compiled
-- from the SDKs' code (see ofauth-endpoints.md, section 2.1 and appendix A):
--   name       the TypeScript SDK's method path ("access.earnings.listTransactions")
--   method     HTTP method
--   path       with {param} placeholders (always required)
--   query      wire names sent in the query string
--   body       wire names sent in the JSON body (DELETE included)
--   required   required query/body fields
--   page       pagination style (ofauth.pagination): offset, next_offset,
--              marker, time, id_cursor, cursor, array; nil = one answer
--   items      the field holding a page's items ("list" or "items")
--   returns    documented top-level fields of a successful answer
--   untyped    true where the SDKs type the answer as an untyped object
--   item       documented fields of one list item
--   scope      permission named by the SDKs
--   connection true when x-connection-id is required (Access, Vault+)
-- The entries were compiled once by a script from that reference (its
-- endpoint table, SDK name appendix and pagination notes) plus hand fixes for
-- shapes it gives in prose; this file is now the source: edit it here, one
-- entry per line. spec/ofauth_catalogue_spec.lua checks every entry against
-- the emulator.
-- The types of fields are in M.types (by wire name), with per-entry
-- overrides in M.entry_types. The proxy (/v2/access/proxy/*) and the upload
-- helper are not entries: see Access:proxy and ofauth.upload.
local M = {}

--- Field types used to check parameters before a request: "integer",
-- "number", "boolean", "string", "array", "object", "id" (string or
-- integer), "scalar" (string, number or boolean: the default).
M.types = {
  limit = "integer", offset = "integer", userListId = "integer", listId = "id",
  discount = "integer", period = "integer", duration = "integer", finishDays = "integer",
  subscribeCounts = "integer", subscribeDays = "integer", previewMediaCount = "integer",
  expireAfter = "integer", size = "integer", campaignId = "integer", trialId = "integer",
  price = "number", fundRaisingTargetAmount = "number", partNumber = "integer",
  withTotal = "boolean", monthlyTotal = "boolean", pinned = "boolean",
  includePostCounts = "boolean", include_users = "boolean", isLockedText = "boolean",
  isMarkdown = "boolean", clearMedia = "boolean", isForwardedMessage = "boolean",
  mediaItems = "array", userTags = "array", userIds = "array", userLists = "array",
  excludeUserLists = "array", listIds = "array", mediaIds = "array", permissions = "array",
  fundRaisingTipsPresets = "array",
  geolocation = "object", vaultPlus = "object", releaseForms = "object", vaultUpload = "object",
  redirectUrl = "string", clientReferenceId = "string", connectionId = "string",
  clientSecret = "string", cookie = "string", userAgent = "string", name = "string",
  text = "string", message = "string", startDate = "string", endDate = "string",
  beforePublishTime = "scalar", marker = "scalar", cursor = "string", last_id = "id",
  first_id = "id", userId = "id", withUserId = "id", mediaUploadId = "string",
  filename = "string", contentType = "string", etag = "string",
}

--- Per-entry type overrides, where one wire name has two meanings.
M.entry_types = {
  ["access.subscribers.list"] = { filter = "object" },
  ["access.subscriptions.list"] = { filter = "object" },
  ["access.promotions.create"] = { type = "array" },
  ["access.promotions.replace"] = { type = "array" },
  ["access.users.getList"] = { userIds = "array_or_string" },
}

M.entries = {
  { name = "account.getSettings", method = "GET", path = "/v2/account/settings", returns = { "vaultPlus" }, summary = "Get organization settings" },
  { name = "account.updateSettings", method = "PATCH", path = "/v2/account/settings", body = { "vaultPlus" }, returns = { "settings" }, summary = "Update organization settings" },
  { name = "account.whoami", method = "GET", path = "/v2/account/whoami", returns = { "id", "name", "permissions" }, summary = "Whoami" },
  { name = "account.connections.list", method = "GET", path = "/v2/account/connections", query = { "status", "imported", "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "status", "userData", "permissions", "expiredAt", "createdAt", "updatedAt", "clientReferenceId", "imported", "lastCheckedAt" }, summary = "List connections" },
  { name = "account.connections.createImport", method = "POST", path = "/v2/account/connections/import", body = { "cookie", "userAgent", "permissions", "clientReferenceId" }, required = { "cookie", "userAgent" }, returns = { "id", "status", "userData", "permissions", "expiredAt", "createdAt", "updatedAt", "clientReferenceId", "imported", "lastCheckedAt" }, summary = "Import connection" },
  { name = "account.connections.updateImport", method = "PATCH", path = "/v2/account/connections/import/{connectionId}", body = { "cookie", "userAgent" }, required = { "cookie", "userAgent" }, returns = { "id", "status", "userData", "permissions", "expiredAt", "createdAt", "updatedAt", "clientReferenceId", "imported", "lastCheckedAt" }, summary = "Update imported connection session" },
  { name = "account.connections.delete", method = "DELETE", path = "/v2/account/connections/{connectionId}", untyped = true, summary = "Disconnect connection" },
  { name = "account.connections.invalidate", method = "POST", path = "/v2/account/connections/{connectionId}/invalidate", untyped = true, summary = "Invalidate connection" },
  { name = "account.connections.getSettings", method = "GET", path = "/v2/account/connections/{connectionId}/settings", returns = { "connectionId", "vaultPlus" }, summary = "Get connection settings" },
  { name = "account.connections.updateSettings", method = "PATCH", path = "/v2/account/connections/{connectionId}/settings", body = { "vaultPlus" }, returns = { "settings" }, summary = "Update connection settings" },
  { name = "link.init", method = "POST", path = "/v2/link/init", body = { "redirectUrl", "clientReferenceId", "connectionId", "geolocation" }, returns = { "url", "expiresAt" }, summary = "Initialize a Link session" },
  { name = "link.get", method = "GET", path = "/v2/link/{clientSecret}", returns = { "status" }, summary = "Get login status" },
  { name = "link.delete", method = "DELETE", path = "/v2/link/{clientSecret}", untyped = true, summary = "Delete login session" },
  { name = "dynamicRules.list", method = "GET", path = "/v2/dynamic-rules", returns = { "rules", "is_current", "is_public", "is_early_access" }, summary = "Get dynamic rules" },
  { name = "dynamicRules.sign", method = "POST", path = "/v2/dynamic-rules/sign", body = { "endpoint", "time", "user-id" }, required = { "endpoint" }, returns = { "signed", "is_public", "is_early_access" }, summary = "Generate sign headers for a request" },
  { name = "dynamicRules.getStatus", method = "GET", path = "/v2/dynamic-rules/status", returns = { "revision", "early_access_revision", "public_revision", "is_current", "is_early_access", "is_public", "access_granted" }, summary = "Get dynamic rules status" },
  { name = "access.self.get", method = "GET", path = "/v2/access/self", returns = { "id", "username", "name", "isAuth", "isVerified", "avatar", "subscribersCount", "postsCount" }, scope = "profile:read", connection = true, summary = "Get current user" },
  { name = "access.self.update", method = "PATCH", path = "/v2/access/self", body = { "name", "about" }, returns = { "id", "username", "name", "avatar", "about", "isVerified" }, scope = "profile:write", connection = true, summary = "Update current user profile" },
  { name = "access.self.listNotifications", method = "GET", path = "/v2/access/self/notifications", query = { "limit", "offset", "type", "relatedUsername" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "subType", "createdAt", "isRead", "text", "replacePairs", "canGoToProfile", "userId" }, scope = "notifications:read", connection = true, summary = "List notifications" },
  { name = "access.self.listReleaseForms", method = "GET", path = "/v2/access/self/release-forms", query = { "limit", "offset", "filter", "sortBy", "sortDirection", "search" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "name", "partnerId", "code", "status", "createdAt", "approvedAt", "lastChangedAt", "userName", "hasUser", "isHidden" }, scope = "profile:read", connection = true, summary = "List release forms" },
  { name = "access.self.listTaggedFriendUsers", method = "GET", path = "/v2/access/self/tagged-friend-users", query = { "limit", "offset", "filter", "sortBy", "sortDirection", "search" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "name", "user" }, scope = "profile:read", connection = true, summary = "List tagged friend users" },
  { name = "access.earnings.listChargebacks", method = "GET", path = "/v2/access/earnings/chargebacks", query = { "startDate", "endDate", "marker" }, page = "marker", items = "list", returns = { "list", "hasMore", "nextMarker" }, item = { "id", "createdAt", "paymentType", "payment" }, scope = "earnings:read", connection = true, summary = "List chargebacks" },
  { name = "access.earnings.getChart", method = "GET", path = "/v2/access/earnings/chart", query = { "startDate", "endDate", "by", "withTotal", "monthlyTotal" }, returns = { "chart", "total" }, scope = "earnings:read", connection = true, summary = "Get earnings chart" },
  { name = "access.earnings.listTransactions", method = "GET", path = "/v2/access/earnings/transactions", query = { "startDate", "marker", "type", "tipsSource" }, page = "marker", items = "list", returns = { "list", "hasMore", "nextMarker" }, item = { "id", "type", "createdAt", "amounts", "currency", "description", "status", "payoutPendingDays", "user" }, scope = "earnings:read", connection = true, summary = "List transactions" },
  { name = "access.analytics.campaigns.getChart", method = "GET", path = "/v2/access/analytics/campaigns/chart", query = { "startDate", "endDate", "withTotal" }, scope = "analytics:read", connection = true, summary = "Campaigns chart" },
  { name = "access.analytics.campaigns.getTop", method = "GET", path = "/v2/access/analytics/campaigns/top", query = { "limit", "offset", "startDate", "endDate" }, page = "offset", items = "list", returns = { "hasMore", "list" }, item = { "id", "countSubscribers", "countTransitions", "campaignCode", "campaignName", "createdAt", "endDate" }, scope = "analytics:read", connection = true, summary = "Top campaigns" },
  { name = "access.analytics.massMessages.getChart", method = "GET", path = "/v2/access/analytics/mass-messages/chart", query = { "startDate", "endDate", "withTotal" }, returns = { "group_messages", "group_messages_purchases", "direct_messages", "direct_messages_purchases" }, scope = "analytics:read", connection = true, summary = "Mass messages chart" },
  { name = "access.analytics.massMessages.getPurchased", method = "GET", path = "/v2/access/analytics/mass-messages/purchased", query = { "limit", "offset" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "date", "text", "media", "previews", "viewedCount", "sentCount", "isCanceled" }, scope = "analytics:read", connection = true, summary = "Mass messages purchased" },
  { name = "access.analytics.massMessages.getSent", method = "GET", path = "/v2/access/analytics/mass-messages/sent", query = { "startDate", "endDate", "limit" }, returns = { "hasMore", "items" }, item = { "id", "date", "text", "media", "previews", "viewedCount", "sentCount", "isCanceled" }, scope = "analytics:read", connection = true, summary = "Sent mass messages" },
  { name = "access.analytics.massMessages.listBuyers", method = "GET", path = "/v2/access/analytics/mass-messages/{massMessageId}/buyers", query = { "limit", "offset", "marker" }, page = "marker", items = "list", returns = { "list", "hasMore" }, item = { "id", "username", "name", "isVerified", "avatar" }, scope = "analytics:read", connection = true, summary = "Mass message buyers" },
  { name = "access.analytics.posts.getChart", method = "GET", path = "/v2/access/analytics/posts/chart", query = { "startDate", "endDate", "withTotal", "by" }, scope = "analytics:read", connection = true, summary = "Posts chart" },
  { name = "access.analytics.posts.getTop", method = "GET", path = "/v2/access/analytics/posts/top", query = { "by", "startDate", "endDate", "limit", "offset" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "analytics:read", connection = true, summary = "Top posts" },
  { name = "access.analytics.posts.get", method = "GET", path = "/v2/access/analytics/posts/{postId}", returns = { "isAvailable", "hasStats", "tipSum", "purchasedCount", "purchasedSumm" }, scope = "analytics:read", connection = true, summary = "Post stats" },
  { name = "access.analytics.promotions.getChart", method = "GET", path = "/v2/access/analytics/promotions/chart", query = { "startDate", "endDate", "withTotal" }, scope = "analytics:read", connection = true, summary = "Promotions chart" },
  { name = "access.analytics.promotions.getTop", method = "GET", path = "/v2/access/analytics/promotions/top", query = { "limit", "offset", "startDate", "endDate" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "message", "rawMessage", "hasRelatedPromo", "price", "type", "canClaim", "claimsCount", "subscribeCounts", "subscribeDays", "createdAt", "finishedAt", "isFinished" }, scope = "analytics:read", connection = true, summary = "Top promotions" },
  { name = "access.analytics.stories.getChart", method = "GET", path = "/v2/access/analytics/stories/chart", query = { "startDate", "endDate", "withTotal", "by" }, scope = "analytics:read", connection = true, summary = "Stories chart" },
  { name = "access.analytics.stories.getTop", method = "GET", path = "/v2/access/analytics/stories/top", query = { "by", "startDate", "endDate", "limit", "offset" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "media", "viewersCount", "viewers", "likesCount", "tipsAmount" }, scope = "analytics:read", connection = true, summary = "Top stories" },
  { name = "access.analytics.streams.getChart", method = "GET", path = "/v2/access/analytics/streams/chart", query = { "startDate", "endDate", "withTotal", "by" }, scope = "analytics:read", connection = true, summary = "Streams chart" },
  { name = "access.analytics.streams.getTop", method = "GET", path = "/v2/access/analytics/streams/top", query = { "by", "startDate", "endDate", "limit", "offset" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "analytics:read", connection = true, summary = "Top streams" },
  { name = "access.analytics.trials.getChart", method = "GET", path = "/v2/access/analytics/trials/chart", query = { "startDate", "endDate", "withTotal" }, scope = "analytics:read", connection = true, summary = "Trials chart" },
  { name = "access.analytics.trials.getTop", method = "GET", path = "/v2/access/analytics/trials/top", query = { "limit", "offset", "startDate", "endDate" }, page = "offset", items = "items", returns = { "hasMore", "items" }, item = { "id", "trialLinkName", "url", "subscribeDays", "subscribeCounts", "claimCounts", "clicksCounts", "expiredAt", "createdAt", "isFinished" }, scope = "analytics:read", connection = true, summary = "Top trials" },
  { name = "access.analytics.visitorCountries.getChart", method = "GET", path = "/v2/access/analytics/visitor-countries/chart", query = { "startDate", "endDate", "by" }, returns = { "isAvailable", "chart", "total", "hasStats" }, scope = "analytics:read", connection = true, summary = "Visitor countries chart" },
  { name = "access.analytics.visitorCountries.getTop", method = "GET", path = "/v2/access/analytics/visitor-countries/top", query = { "startDate", "endDate", "by" }, returns = { "isAvailable", "hasStats", "topCountries" }, scope = "analytics:read", connection = true, summary = "Top visitor countries" },
  { name = "access.listPosts", method = "GET", path = "/v2/access/posts", query = { "limit", "sortBy", "sortDirection", "pinned", "includePostCounts", "beforePublishTime" }, page = "time", items = "list", returns = { "list", "hasMore", "headMarker", "tailMarker", "counters" }, item = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "posts:read", connection = true, summary = "List own posts" },
  { name = "access.createPosts", method = "POST", path = "/v2/access/posts", body = { "text", "mediaItems", "isLockedText", "price", "previewMediaCount", "releaseForms", "userTags", "isMarkdown", "scheduledDate", "fundRaisingTargetAmount", "fundRaisingTipsPresets", "expireAfter" }, returns = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "posts:write", connection = true, summary = "Create post" },
  { name = "access.getPosts", method = "GET", path = "/v2/access/posts/{postId}", returns = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "posts:read", connection = true, summary = "Get post" },
  { name = "access.replacePosts", method = "PUT", path = "/v2/access/posts/{postId}", body = { "text", "mediaItems", "isLockedText", "price", "previewMediaCount", "releaseForms", "userTags", "isMarkdown", "scheduledDate", "fundRaisingTargetAmount", "fundRaisingTipsPresets", "expireAfter" }, returns = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "posts:write", connection = true, summary = "Edit post" },
  { name = "access.deletePosts", method = "DELETE", path = "/v2/access/posts/{postId}", untyped = true, scope = "posts:write", connection = true, summary = "Delete post" },
  { name = "access.users.listPosts", method = "GET", path = "/v2/access/users/{userId}/posts", query = { "limit", "sortBy", "sortDirection", "pinned", "includePostCounts", "beforePublishTime" }, page = "time", items = "list", returns = { "list", "hasMore", "headMarker", "tailMarker", "counters" }, item = { "id", "text", "rawText", "postedAt", "postedAtPrecise", "media", "mediaCount", "canViewMedia", "isOpened", "tipsAmount", "favoritesCount", "isFavorite", "canComment", "canDelete", "canEdit", "isMediaReady" }, scope = "posts:read", connection = true, summary = "List user posts" },
  { name = "access.chats.list", method = "GET", path = "/v2/access/chats", query = { "limit", "offset", "order", "filter", "query", "userListId" }, page = "next_offset", items = "list", returns = { "list", "hasMore" }, item = { "withUser", "lastMessage", "unreadMessagesCount" }, scope = "messages:read", connection = true, summary = "Chats list" },
  { name = "access.chats.listMedia", method = "GET", path = "/v2/access/chats/{userId}/media", query = { "limit", "offset", "skip_users", "last_id", "opened", "type" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "text", "fromUser", "media", "previews" }, scope = "messages:read", connection = true, summary = "Get chat media" },
  { name = "access.chats.listMessages", method = "GET", path = "/v2/access/chats/{userId}/messages", query = { "limit", "offset", "query", "last_id", "first_id", "include_users" }, page = "id_cursor", items = "list", returns = { "list", "hasMore" }, item = { "id", "text", "fromUser", "media", "previews" }, scope = "messages:read", connection = true, summary = "Chat messages" },
  { name = "access.chats.createMessages", method = "POST", path = "/v2/access/chats/{userId}/messages", body = { "isForwardedMessage", "text", "mediaItems", "isLockedText", "price", "previewMediaCount", "releaseForms", "userTags", "isMarkdown" }, returns = { "id", "text", "fromUser", "media", "previews" }, scope = "messages:write", connection = true, summary = "Send chat message" },
  { name = "access.chats.deleteMessages", method = "DELETE", path = "/v2/access/chats/{userId}/messages/{messageId}", body = { "withUserId" }, required = { "withUserId" }, returns = { "success" }, scope = "messages:write", connection = true, summary = "Unsend chat message" },
  { name = "access.createMassMessages", method = "POST", path = "/v2/access/mass-messages", body = { "isForwardedMessage", "text", "mediaItems", "isLockedText", "price", "previewMediaCount", "releaseForms", "userTags", "isMarkdown", "scheduledDate", "userIds", "userLists", "subscribedAfterDate", "excludeUserLists" }, returns = { "id", "date" }, scope = "messages:write", connection = true, summary = "Create mass message" },
  { name = "access.getMassMessages", method = "GET", path = "/v2/access/mass-messages/{massMessageId}", returns = { "id", "text", "fromUser", "media", "previews" }, scope = "messages:read", connection = true, summary = "Get mass message" },
  { name = "access.replaceMassMessages", method = "PUT", path = "/v2/access/mass-messages/{massMessageId}", body = { "isForwardedMessage", "text", "mediaItems", "isLockedText", "price", "previewMediaCount", "releaseForms", "userTags", "isMarkdown", "scheduledDate", "userIds", "userLists", "subscribedAfterDate", "excludeUserLists" }, returns = { "id", "date" }, scope = "messages:write", connection = true, summary = "Update mass message" },
  { name = "access.deleteMassMessages", method = "DELETE", path = "/v2/access/mass-messages/{massMessageId}", returns = { "success" }, scope = "messages:write", connection = true, summary = "Delete mass message" },
  { name = "access.subscribers.list", method = "GET", path = "/v2/access/subscribers", query = { "query", "filter", "type", "startDate", "endDate", "latestType", "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "name", "username", "displayName", "isVerified", "avatar", "avatarThumbs", "lastSeen", "subscription", "spending", "isRestricted", "isBlocked", "capabilities", "lists" }, scope = "subscribers:read", connection = true, summary = "List subscribers" },
  { name = "access.subscribers.setCustomName", method = "PUT", path = "/v2/access/subscribers/{userId}/custom-name", body = { "displayName" }, required = { "displayName" }, untyped = true, scope = "subscribers:write", connection = true, summary = "Set custom name for subscriber" },
  { name = "access.subscribers.setDiscount", method = "PUT", path = "/v2/access/subscribers/{userId}/discount", body = { "discount", "period" }, required = { "discount", "period" }, untyped = true, scope = "subscribers:write", connection = true, summary = "Apply discount to subscriber" },
  { name = "access.subscribers.setNote", method = "PUT", path = "/v2/access/subscribers/{userId}/note", body = { "notice" }, required = { "notice" }, untyped = true, scope = "subscribers:write", connection = true, summary = "Update subscriber note" },
  { name = "access.subscriptions.list", method = "GET", path = "/v2/access/subscriptions", query = { "limit", "offset", "query", "filter", "type" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "username", "name", "avatar", "lists", "subscribedAt", "expiredAt", "renewedAt", "isActive", "subscriptionPrice" }, scope = "subscriptions:read", connection = true, summary = "List subscriptions" },
  { name = "access.subscriptions.getCount", method = "GET", path = "/v2/access/subscriptions/count", returns = { "subscriptions", "subscribers", "bookmarks" }, scope = "subscriptions:read", connection = true, summary = "Get subscription counts" },
  { name = "access.subscriptions.getHistory", method = "GET", path = "/v2/access/subscriptions/{subscriptionId}/history", query = { "all" }, returns = { "list", "hasMore" }, item = { "subscribeDate", "expireDate", "price" }, scope = "subscriptions:read", connection = true, summary = "Get subscription history" },
  { name = "access.promotions.list", method = "GET", path = "/v2/access/promotions", query = { "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "message", "rawMessage", "hasRelatedPromo", "price", "type", "canClaim", "claimsCount", "subscribeCounts", "subscribeDays", "createdAt", "finishedAt", "isFinished" }, scope = "promotions:read", connection = true, summary = "List promotions" },
  { name = "access.promotions.create", method = "POST", path = "/v2/access/promotions", body = { "discount", "message", "finishDays", "subscribeCounts", "subscribeDays", "type" }, required = { "discount", "message", "finishDays", "subscribeCounts", "subscribeDays", "type" }, returns = { "list", "hasMore" }, item = { "id", "message", "rawMessage", "hasRelatedPromo", "price", "type", "canClaim", "claimsCount", "subscribeCounts", "subscribeDays", "createdAt", "finishedAt", "isFinished" }, scope = "promotions:write", connection = true, summary = "Create promotion" },
  { name = "access.promotions.listBundles", method = "GET", path = "/v2/access/promotions/bundles", query = { "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "discount", "duration", "price", "canBuy" }, scope = "promotions:read", connection = true, summary = "List bundles" },
  { name = "access.promotions.createBundles", method = "POST", path = "/v2/access/promotions/bundles", body = { "discount", "duration" }, required = { "discount", "duration" }, returns = { "id", "discount", "duration", "price", "canBuy" }, scope = "promotions:write", connection = true, summary = "Create bundle" },
  { name = "access.promotions.getBundles", method = "GET", path = "/v2/access/promotions/bundles/{bundleId}", returns = { "id", "discount", "duration", "price", "canBuy" }, scope = "promotions:read", connection = true, summary = "Get bundle" },
  { name = "access.promotions.replaceBundles", method = "PUT", path = "/v2/access/promotions/bundles/{bundleId}", body = { "discount", "duration" }, returns = { "id", "discount", "duration", "price", "canBuy" }, scope = "promotions:write", connection = true, summary = "Update bundle" },
  { name = "access.promotions.deleteBundles", method = "DELETE", path = "/v2/access/promotions/bundles/{bundleId}", returns = { "id", "discount", "duration", "price", "canBuy" }, scope = "promotions:write", connection = true, summary = "Delete bundle" },
  { name = "access.promotions.trackingLinks.list", method = "GET", path = "/v2/access/promotions/tracking-links", query = { "limit", "offset", "pagination", "with_deleted", "sorting_deleted", "stats" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "name" }, scope = "promotions:read", connection = true, summary = "List tracking links" },
  { name = "access.promotions.trackingLinks.create", method = "POST", path = "/v2/access/promotions/tracking-links", body = { "name" }, required = { "name" }, returns = { "id", "name" }, scope = "promotions:write", connection = true, summary = "Create tracking link" },
  { name = "access.promotions.trackingLinks.createShareAccess", method = "POST", path = "/v2/access/promotions/tracking-links/share-access", body = { "campaignId", "userId" }, required = { "campaignId", "userId" }, returns = { "success" }, scope = "promotions:write", connection = true, summary = "Share tracking link access" },
  { name = "access.promotions.trackingLinks.deleteShareAccess", method = "DELETE", path = "/v2/access/promotions/tracking-links/share-access", body = { "campaignId", "userId" }, required = { "campaignId", "userId" }, returns = { "success" }, scope = "promotions:write", connection = true, summary = "Revoke tracking link access" },
  { name = "access.promotions.trackingLinks.get", method = "GET", path = "/v2/access/promotions/tracking-links/{trackingLinkId}", returns = { "id", "name" }, scope = "promotions:read", connection = true, summary = "Get tracking link" },
  { name = "access.promotions.trackingLinks.replace", method = "PUT", path = "/v2/access/promotions/tracking-links/{trackingLinkId}", body = { "name" }, returns = { "id", "name" }, scope = "promotions:write", connection = true, summary = "Update tracking link" },
  { name = "access.promotions.trackingLinks.delete", method = "DELETE", path = "/v2/access/promotions/tracking-links/{trackingLinkId}", returns = { "success" }, scope = "promotions:write", connection = true, summary = "Delete tracking link" },
  { name = "access.promotions.trackingLinks.listClaimers", method = "GET", path = "/v2/access/promotions/tracking-links/{trackingLinkId}/claimers", returns = { "list" }, item = { "id", "username", "name", "avatar" }, scope = "promotions:read", connection = true, summary = "Get tracking link claimers" },
  { name = "access.promotions.trialLinks.list", method = "GET", path = "/v2/access/promotions/trial-links", query = { "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "trialLinkName", "url", "subscribeDays", "subscribeCounts", "claimCounts", "clicksCounts", "expiredAt", "createdAt", "isFinished" }, scope = "promotions:read", connection = true, summary = "List trial links" },
  { name = "access.promotions.trialLinks.create", method = "POST", path = "/v2/access/promotions/trial-links", body = { "trialLinkName", "subscribeDays", "subscribeCounts", "expiredAt" }, required = { "trialLinkName", "subscribeDays" }, returns = { "id", "trialLinkName", "url", "subscribeDays", "subscribeCounts", "claimCounts", "clicksCounts", "expiredAt", "createdAt", "isFinished" }, scope = "promotions:write", connection = true, summary = "Create trial link" },
  { name = "access.promotions.trialLinks.createShareAccess", method = "POST", path = "/v2/access/promotions/trial-links/share-access", body = { "trialId", "userId" }, required = { "trialId", "userId" }, returns = { "success" }, scope = "promotions:write", connection = true, summary = "Share trial link access" },
  { name = "access.promotions.trialLinks.deleteShareAccess", method = "DELETE", path = "/v2/access/promotions/trial-links/share-access", body = { "trialId", "userId" }, required = { "trialId", "userId" }, returns = { "success" }, scope = "promotions:write", connection = true, summary = "Revoke trial link access" },
  { name = "access.promotions.trialLinks.get", method = "GET", path = "/v2/access/promotions/trial-links/{trialLinkId}", returns = { "id", "trialLinkName", "url", "subscribeDays", "subscribeCounts", "claimCounts", "clicksCounts", "expiredAt", "createdAt", "isFinished" }, scope = "promotions:read", connection = true, summary = "Get trial link" },
  { name = "access.promotions.trialLinks.replace", method = "PUT", path = "/v2/access/promotions/trial-links/{trialLinkId}", body = { "trialLinkName", "subscribeDays", "subscribeCounts", "expiredAt" }, returns = { "success" }, scope = "promotions:write", connection = true, summary = "Update trial link" },
  { name = "access.promotions.trialLinks.delete", method = "DELETE", path = "/v2/access/promotions/trial-links/{trialLinkId}", returns = { "success" }, scope = "promotions:write", connection = true, summary = "Delete trial link" },
  { name = "access.promotions.replace", method = "PUT", path = "/v2/access/promotions/{promotionId}", body = { "discount", "message", "finishDays", "subscribeCounts", "subscribeDays", "type" }, returns = { "id", "message", "rawMessage", "hasRelatedPromo", "price", "type", "canClaim", "claimsCount", "subscribeCounts", "subscribeDays", "createdAt", "finishedAt", "isFinished" }, scope = "promotions:write", connection = true, summary = "Update promotion" },
  { name = "access.promotions.delete", method = "DELETE", path = "/v2/access/promotions/{promotionId}", returns = { "success" }, scope = "promotions:write", connection = true, summary = "Delete promotion" },
  { name = "access.promotions.createStop", method = "POST", path = "/v2/access/promotions/{promotionId}/stop", returns = { "success" }, scope = "promotions:write", connection = true, summary = "Stop promotion" },
  { name = "access.users.getBlocked", method = "GET", path = "/v2/access/users/blocked", query = { "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "username", "name", "avatar" }, scope = "users:write", connection = true, summary = "List blocked users" },
  { name = "access.users.getList", method = "GET", path = "/v2/access/users/list", query = { "userIds" }, required = { "userIds" }, returns = { "users" }, item = { "id", "username", "name", "avatar", "about", "isVerified" }, scope = "profile:read", connection = true, summary = "List users by IDs" },
  { name = "access.users.getRestrict", method = "GET", path = "/v2/access/users/restrict", query = { "limit", "offset" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "username", "name", "avatar" }, scope = "users:write", connection = true, summary = "List restricted users" },
  { name = "access.users.search", method = "GET", path = "/v2/access/users/search", query = { "limit", "offset", "query" }, page = "array", item = { "id", "username", "name", "avatar", "about", "isVerified" }, scope = "profile:read", connection = true, summary = "Search performers" },
  { name = "access.users.get", method = "GET", path = "/v2/access/users/{userId}", returns = { "id", "username", "name", "avatar", "about", "isVerified" }, scope = "profile:read", connection = true, summary = "Get user" },
  { name = "access.users.restrict", method = "POST", path = "/v2/access/users/{userId}/restrict", untyped = true, scope = "users:write", connection = true, summary = "Restrict user" },
  { name = "access.users.restrict2", method = "DELETE", path = "/v2/access/users/{userId}/restrict", untyped = true, scope = "users:write", connection = true, summary = "Unrestrict user" },
  { name = "access.users.lists.list", method = "GET", path = "/v2/access/users/lists", query = { "limit", "offset", "query" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "name", "sortList", "users" }, scope = "lists:read", connection = true, summary = "List user lists" },
  { name = "access.users.lists.create", method = "POST", path = "/v2/access/users/lists", body = { "name" }, required = { "name" }, returns = { "id", "type", "name", "sortList", "users" }, scope = "lists:write", connection = true, summary = "Create user list" },
  { name = "access.users.lists.get", method = "GET", path = "/v2/access/users/lists/{listId}", returns = { "id", "type", "name", "sortList", "users" }, scope = "lists:read", connection = true, summary = "Get user list" },
  { name = "access.users.lists.update", method = "PATCH", path = "/v2/access/users/lists/{listId}", body = { "name" }, required = { "name" }, returns = { "id", "type", "name", "sortList", "users" }, scope = "lists:write", connection = true, summary = "Update user list" },
  { name = "access.users.lists.delete", method = "DELETE", path = "/v2/access/users/lists/{listId}", untyped = true, scope = "lists:write", connection = true, summary = "Delete user list" },
  { name = "access.users.lists.listUsers", method = "GET", path = "/v2/access/users/lists/{listId}/users", query = { "limit", "offset" }, page = "next_offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "username", "name", "avatar" }, scope = "lists:read", connection = true, summary = "List users in user list" },
  { name = "access.users.lists.createUsers", method = "POST", path = "/v2/access/users/lists/{listId}/users/{userId}", returns = { "list", "userState" }, scope = "lists:write", connection = true, summary = "Add user to list" },
  { name = "access.users.lists.deleteUsers", method = "DELETE", path = "/v2/access/users/lists/{listId}/users/{userId}", returns = { "list", "hasMore" }, scope = "lists:write", connection = true, summary = "Remove user from user list" },
  { name = "access.users.lists.create2", method = "POST", path = "/v2/access/users/{userId}/lists", body = { "listIds" }, required = { "listIds" }, returns = { "success" }, scope = "lists:write", connection = true, summary = "Add user to multiple lists" },
  { name = "access.vault.listMedia", method = "GET", path = "/v2/access/vault/media", query = { "limit", "offset", "sortBy", "sortDirection", "listId", "query", "mediaType" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "convertedToVideo", "canView", "hasError", "createdAt", "isReady", "releaseForms", "counters", "lists" }, scope = "vault:read", connection = true, summary = "List vault media" },
  { name = "access.vault.lists.list", method = "GET", path = "/v2/access/vault/lists", query = { "limit", "offset", "query" }, page = "offset", items = "list", returns = { "list", "hasMore", "canCreateVaultLists", "order", "sort" }, item = { "id", "type", "name", "hasMedia", "canUpdate", "canDelete", "medias" }, scope = "vault:read", connection = true, summary = "List vault folders" },
  { name = "access.vault.lists.create", method = "POST", path = "/v2/access/vault/lists", body = { "name" }, required = { "name" }, returns = { "id", "type", "name", "hasMedia", "canUpdate", "canDelete", "medias" }, scope = "vault:write", connection = true, summary = "Create vault list" },
  { name = "access.vault.lists.update", method = "PATCH", path = "/v2/access/vault/lists/{listId}", body = { "name", "clearMedia" }, required = { "name" }, returns = { "id", "type", "name", "hasMedia", "canUpdate", "canDelete", "medias" }, scope = "vault:write", connection = true, summary = "Update vault list" },
  { name = "access.vault.lists.delete", method = "DELETE", path = "/v2/access/vault/lists/{listId}", untyped = true, scope = "vault:write", connection = true, summary = "Delete vault list" },
  { name = "access.vault.lists.listMedia", method = "GET", path = "/v2/access/vault/lists/{listId}/media", query = { "limit", "offset", "sortBy", "sortDirection", "query", "mediaType" }, page = "offset", items = "list", returns = { "list", "hasMore" }, item = { "id", "type", "convertedToVideo", "canView", "hasError", "createdAt", "isReady", "releaseForms", "counters", "lists" }, scope = "vault:read", connection = true, summary = "List media in vault list" },
  { name = "access.vault.lists.createMedia", method = "POST", path = "/v2/access/vault/lists/{listId}/media", body = { "mediaIds" }, required = { "mediaIds" }, returns = { "id", "type", "name", "hasMedia", "canUpdate", "canDelete", "medias" }, scope = "vault:write", connection = true, summary = "Add media to vault list" },
  { name = "access.uploads.check", method = "POST", path = "/v2/access/uploads/check", body = { "etag", "size" }, required = { "etag", "size" }, returns = { "exists" }, scope = "vault:write", connection = true, summary = "Check if media already exists in vault" },
  { name = "access.uploads.complete", method = "POST", path = "/v2/access/uploads/complete", body = { "mediaUploadId" }, required = { "mediaUploadId" }, returns = { "mediaUploadId" }, scope = "vault:write", connection = true, summary = "Finalize media upload" },
  { name = "access.uploads.init", method = "POST", path = "/v2/access/uploads/init", body = { "filename", "size", "contentType", "vaultUpload" }, required = { "filename", "size", "contentType" }, returns = { "mediaUploadId" }, scope = "vault:write", connection = true, summary = "Initialize media upload" },
  { name = "access.uploads.replace", method = "PUT", path = "/v2/access/uploads/{mediaUploadId}", returns = { "mediaUploadId" }, scope = "vault:write", connection = true, summary = "Upload single-part media and finalize (No need to call /complete after upload if using this endpoint)" },
  { name = "access.uploads.replaceParts", method = "PUT", path = "/v2/access/uploads/{mediaUploadId}/parts/{partNumber}", returns = { "mediaUploadId", "partNumber", "etag" }, scope = "vault:write", connection = true, summary = "Upload chunk to managed media upload" },
  { name = "vaultPlus.createBatch", method = "POST", path = "/v2/vault-plus/batch", body = { "mediaIds" }, required = { "mediaIds" }, returns = { "items" }, item = { "id", "type", "duration", "media" }, connection = true, summary = "Get multiple media items with all quality variants" },
  { name = "vaultPlus.getList", method = "GET", path = "/v2/vault-plus/list", query = { "status", "source", "contentType", "limit", "cursor" }, page = "cursor", items = "items", returns = { "items" }, item = { "id", "type", "duration", "media" }, connection = true, summary = "List stored media for a connection" },
  { name = "vaultPlus.purge", method = "DELETE", path = "/v2/vault-plus/purge", returns = { "success", "purgedCount", "freedBytes" }, connection = true, summary = "Remove all stored media for a connection" },
  { name = "vaultPlus.get", method = "GET", path = "/v2/vault-plus/{mediaId}", returns = { "id", "type", "duration", "media" }, connection = true, summary = "Get media item with all quality variants" },
  { name = "vaultPlus.delete", method = "DELETE", path = "/v2/vault-plus/{mediaId}", returns = { "success", "mediaId", "freedBytes" }, connection = true, summary = "Delete a stored media item" },
  { name = "vaultPlus.store.createList", method = "POST", path = "/v2/vault-plus/store/list/{listId}", returns = { "queued", "listId" }, connection = true, summary = "Store all media from a vault list" },
  { name = "vaultPlus.store.getStats", method = "GET", path = "/v2/vault-plus/store/stats", returns = { "totalConnections", "connectionsWithVaultPlus", "totalStorageBytes", "totalMediaCount" }, summary = "Get organization vault stats" },
  { name = "vaultPlus.store.getStatus", method = "GET", path = "/v2/vault-plus/store/status", returns = { "connectionId", "totalMedia", "storedCount", "pendingCount", "totalSizeBytes" }, connection = true, summary = "Get storage status for a connection" },
}

M.by_name = {}
for _, e in ipairs(M.entries) do
  assert(not M.by_name[e.name], e.name)
  M.by_name[e.name] = e
  e.path_params = {}
  for p in e.path:gmatch("{([^}]+)}") do e.path_params[#e.path_params + 1] = p end
  e.fields = {} -- wire name -> "path" | "query" | "body"
  for _, p in ipairs(e.path_params) do e.fields[p] = "path" end
  for _, q in ipairs(e.query or {}) do e.fields[q] = "query" end
  for _, b in ipairs(e.body or {}) do e.fields[b] = "body" end
  e.required_set = {}
  for _, p in ipairs(e.path_params) do e.required_set[p] = true end
  for _, r in ipairs(e.required or {}) do e.required_set[r] = true end
end

--- The type of field `field` of entry `e`.
function M.type_of(e, field)
  local over = M.entry_types[e.name]
  if over and over[field] then return over[field] end
  if e.fields[field] == "path" then return "id" end
  return M.types[field] or "scalar"
end

--- The entry called `name`, or nil. For Access operations the "access."
-- prefix may be left out.
function M.find(name)
  if type(name) ~= "string" then return nil end
  return M.by_name[name] or M.by_name["access." .. name]
end

--- "listTransactions" -> "list_transactions"; "trackingLinks" -> "tracking_links".
function M.snake(s)
  return (s:gsub("(%l)(%u)", "%1_%2"):gsub("(%d)(%u)", "%1_%2"):lower())
end

--- Entries whose name, path or summary contains `filter` (plain text,
-- case-insensitive), in catalogue order.
function M.list(filter)
  local out = {}
  local f = filter and filter:lower()
  for _, e in ipairs(M.entries) do
    if not f or e.name:lower():find(f, 1, true) or e.path:lower():find(f, 1, true)
      or e.summary:lower():find(f, 1, true) then
      out[#out + 1] = e
    end
  end
  return out
end

return M

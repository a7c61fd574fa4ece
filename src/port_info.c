/*
 * Compatibility shim: every read of PostgreSQL's Port goes through here, compiled against
 * the server's own headers, because its layout differs between major versions (17 dropped
 * fields before the names) and build options (ENABLE_GSS, USE_SSL shift the fields after
 * `hba`). Nothing here allocates or can raise an ERROR. Called from hook.rs.
 *
 * Everything here runs on the login path, in a freshly forked backend that has never
 * touched these pages: LN_LOGIN_PATH puts it in the section that hook.rs's functions share,
 * so the login path costs as few first-touch page faults as possible (BENCHMARKS.md).
 */
#include "postgres.h"
#include "libpq/hba.h"
#include "libpq/libpq-be.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"

#define LN_LOGIN_PATH __attribute__((section(".text.hot.login_notification")))

/* The pg_hba method that matched ("trust", "scram-sha-256", ...), or NULL. Valid only
 * during authentication: afterwards port->hba points into freed memory. */
LN_LOGIN_PATH const char *
login_notification_auth_method(Port *port)
{
	if (port == NULL || port->hba == NULL)
		return NULL;
	return hba_authname(port->hba->auth_method);
}

LN_LOGIN_PATH bool
login_notification_ssl_in_use(Port *port)
{
	return port != NULL && port->ssl_in_use;
}

/* TLS protocol version and cipher, or NULL without TLS. */
LN_LOGIN_PATH const char *
login_notification_ssl_version(Port *port)
{
#ifdef USE_SSL
	if (port != NULL && port->ssl_in_use)
		return be_tls_get_version(port);
#endif
	return NULL;
}

LN_LOGIN_PATH const char *
login_notification_ssl_cipher(Port *port)
{
#ifdef USE_SSL
	if (port != NULL && port->ssl_in_use)
		return be_tls_get_cipher(port);
#endif
	return NULL;
}

/*
 * The raw application_name from the startup packet (the last one sent), or NULL.
 * Port.application_name cannot be used: PostgreSQL cleans it before clipping it, while
 * the session (pg_stat_activity) clips first; hook.rs reproduces the latter.
 */
LN_LOGIN_PATH const char *
login_notification_raw_application_name(Port *port)
{
	ListCell   *lc;
	const char *raw = NULL;

	if (port == NULL)
		return NULL;
	/* guc_options holds name, value, name, value, ... */
	for (lc = list_head(port->guc_options); lc != NULL; lc = lnext(port->guc_options, lc))
	{
		const char *name = (const char *) lfirst(lc);

		lc = lnext(port->guc_options, lc);
		if (lc == NULL)
			break;
		if (strcmp(name, "application_name") == 0)
			raw = (const char *) lfirst(lc);
	}
	return raw;
}

/* The startup packet's names and the client's address, as PostgreSQL stored them. */
LN_LOGIN_PATH const char *
login_notification_user_name(Port *port)
{
	return port ? port->user_name : NULL;
}

LN_LOGIN_PATH const char *
login_notification_database_name(Port *port)
{
	return port ? port->database_name : NULL;
}

LN_LOGIN_PATH const char *
login_notification_remote_host(Port *port)
{
	return port ? port->remote_host : NULL;
}

LN_LOGIN_PATH const char *
login_notification_remote_port(Port *port)
{
	return port ? port->remote_port : NULL;
}

/*
 * Wakes the worker. SetLatch never raises an ERROR, so it is called here rather than
 * through pgrx, whose guard around every pg_sys call adds code pages to the login path.
 */
LN_LOGIN_PATH void
login_notification_set_latch(Latch *latch)
{
	SetLatch(latch);
}

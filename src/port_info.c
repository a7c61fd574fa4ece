/*
 * Compatibility shim: reads the parts of PostgreSQL's Port that differ between major
 * versions and build options (ENABLE_GSS, USE_SSL shift the fields after `hba`), compiled
 * against the server's own headers so the layout is always right. Called from hook.rs.
 */
#include "postgres.h"
#include "libpq/hba.h"
#include "libpq/libpq-be.h"

/* The pg_hba method that matched ("trust", "scram-sha-256", ...), or NULL. Valid only
 * during authentication: afterwards port->hba points into freed memory. */
const char *
login_notification_auth_method(Port *port)
{
	if (port == NULL || port->hba == NULL)
		return NULL;
	return hba_authname(port->hba->auth_method);
}

bool
login_notification_ssl_in_use(Port *port)
{
	return port != NULL && port->ssl_in_use;
}

/* TLS protocol version and cipher, or NULL without TLS. */
const char *
login_notification_ssl_version(Port *port)
{
#ifdef USE_SSL
	if (port != NULL && port->ssl_in_use)
		return be_tls_get_version(port);
#endif
	return NULL;
}

const char *
login_notification_ssl_cipher(Port *port)
{
#ifdef USE_SSL
	if (port != NULL && port->ssl_in_use)
		return be_tls_get_cipher(port);
#endif
	return NULL;
}

# Declarations for OpenSSL 3 (libssl, libcrypto): the TLS of the bench's
# HTTPS load and a self-signed certificate made at start. Declarations only;
# the binding is ext/loadgen.pyx (sockets and epoll: sysio.pxd).

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct X509:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct ASN1_INTEGER:
        pass
    ctypedef struct ASN1_TIME:
        pass
    ctypedef struct EVP_MD:
        pass
    enum:
        SSL_ERROR_NONE
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        MBSTRING_ASC
    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_is_init_finished(const SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_get_error(const SSL *ssl, int ret)

cdef extern from "<openssl/evp.h>" nogil:
    EVP_PKEY *EVP_EC_gen(const char *curve)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    const EVP_MD *EVP_sha256()

cdef extern from "<openssl/x509.h>" nogil:
    X509 *X509_new()
    void X509_free(X509 *x)
    int X509_set_version(X509 *x, long version)
    ASN1_INTEGER *X509_get_serialNumber(X509 *x)
    ASN1_TIME *X509_getm_notBefore(const X509 *x)
    ASN1_TIME *X509_getm_notAfter(const X509 *x)
    ASN1_TIME *X509_gmtime_adj(ASN1_TIME *s, long adj)
    int X509_set_pubkey(X509 *x, EVP_PKEY *pkey)
    X509_NAME *X509_get_subject_name(const X509 *x)
    int X509_set_issuer_name(X509 *x, const X509_NAME *name)
    int X509_NAME_add_entry_by_txt(X509_NAME *name, const char *field, int type,
                                   const unsigned char *bytes, int len, int loc, int set)
    int X509_sign(X509 *x, EVP_PKEY *pkey, const EVP_MD *md)
    int ASN1_INTEGER_set(ASN1_INTEGER *a, long v)

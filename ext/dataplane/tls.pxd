# cython: language_level=3
#
# tls: the OpenSSL (libssl, libcrypto; 1.1.1 or 3.x) declarations the worker's TLS listeners use.
# Declarations only: nothing here runs. Every type is opaque; the C compiler sees the real
# prototypes from <openssl/ssl.h>, so a pointer declared void * here is checked there.
#
# How the worker uses them (ext/dataplane/_worker.pyx, "TLS listeners"):
# - bind() builds one SSL_CTX per tls listener from the plan's paths (a reload builds new ones;
#   connections made before keep the context they were made with: SSL_new takes a reference).
# - accept: SSL_new + SSL_set_fd (BIO_NOCLOSE: the worker closes the fd) + SSL_set_accept_state.
# - every epoll event of a TLS connection: SSL_do_handshake until it is done, then SSL_read until
#   SSL_ERROR_WANT_READ (bytes OpenSSL already decrypted do not wake epoll again).
# - errors: SSL_get_error, then the thread's error queue (ERR_peek_error) and
#   SSL_get_verify_result tell a refused certificate from any other handshake failure.

from libc.stdint cimport uint64_t

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass

    const SSL_METHOD *TLS_server_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t n)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *path)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *path, int type)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *cafile, const char *capath)
    void *SSL_load_client_CA_file(const char *path)          # STACK_OF(X509_NAME) *
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, void *names)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    void SSL_CTX_set_default_passwd_cb(SSL_CTX *ctx,
                                       int (*cb)(char *buf, int size, int rwflag,
                                                 void *u) noexcept nogil)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_accept_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_has_pending(const SSL *ssl)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_error(const SSL *ssl, int ret)
    long SSL_get_verify_result(const SSL *ssl)

    int SSL_ERROR_NONE
    int SSL_ERROR_SSL
    int SSL_ERROR_WANT_READ
    int SSL_ERROR_WANT_WRITE
    int SSL_ERROR_SYSCALL
    int SSL_ERROR_ZERO_RETURN
    int SSL_VERIFY_NONE
    int SSL_VERIFY_PEER
    int SSL_VERIFY_FAIL_IF_NO_PEER_CERT
    int SSL_FILETYPE_PEM
    int TLS1_2_VERSION
    int TLS1_3_VERSION
    uint64_t SSL_OP_NO_RENEGOTIATION
    uint64_t SSL_OP_NO_COMPRESSION
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE
    long SSL_MODE_RELEASE_BUFFERS
    long SSL_SESS_CACHE_OFF
    int SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
    int SSL_R_CERTIFICATE_VERIFY_FAILED

cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    int ERR_GET_REASON(unsigned long e)
    void ERR_error_string_n(unsigned long e, char *buf, size_t n)

cdef extern from "<openssl/x509_vfy.h>" nogil:
    long X509_V_OK

# Not in OpenSSL 1.1.1 (3.0 added it): an EOF without close_notify is then SSL_ERROR_SYSCALL
# with errno 0, which the worker treats the same way.
# errno_clear(): errno = 0 before SSL_read, so an EOF (SSL_ERROR_SYSCALL, errno still 0) is told
# from a reset (Cython would make `errno = 0` a local variable).
cdef extern from *:
    """
    #include <errno.h>
    #ifndef SSL_OP_IGNORE_UNEXPECTED_EOF
    #define SSL_OP_IGNORE_UNEXPECTED_EOF 0
    #endif
    static inline void hepfast_errno_clear(void) { errno = 0; }
    """
    uint64_t SSL_OP_IGNORE_UNEXPECTED_EOF
    void errno_clear "hepfast_errno_clear" () nogil

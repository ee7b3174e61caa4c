# BoringSSL from Debian's android-libboringssl-dev: headers under
# /usr/include/android, shared libraries under /usr/lib/<triplet>/android, which is
# not on the loader path, hence the rpath.
find_path(BORINGSSL_INCLUDE_DIR openssl/ssl.h PATHS /usr/include/android NO_DEFAULT_PATH)
find_library(BORINGSSL_SSL_LIBRARY NAMES ssl PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/android NO_DEFAULT_PATH)
find_library(BORINGSSL_CRYPTO_LIBRARY NAMES crypto PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/android NO_DEFAULT_PATH)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(BoringSSL REQUIRED_VARS BORINGSSL_INCLUDE_DIR BORINGSSL_SSL_LIBRARY BORINGSSL_CRYPTO_LIBRARY)
if(BoringSSL_FOUND AND NOT TARGET BoringSSL::crypto)
  get_filename_component(_bssl_dir ${BORINGSSL_CRYPTO_LIBRARY} DIRECTORY)
  add_library(BoringSSL::crypto SHARED IMPORTED)
  set_target_properties(BoringSSL::crypto PROPERTIES IMPORTED_LOCATION ${BORINGSSL_CRYPTO_LIBRARY}
    IMPORTED_NO_SONAME OFF INTERFACE_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR}
    INTERFACE_LINK_OPTIONS "-Wl,-rpath,${_bssl_dir}")
  add_library(BoringSSL::ssl SHARED IMPORTED)
  set_target_properties(BoringSSL::ssl PROPERTIES IMPORTED_LOCATION ${BORINGSSL_SSL_LIBRARY}
    INTERFACE_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR}
    INTERFACE_LINK_LIBRARIES BoringSSL::crypto)
endif()

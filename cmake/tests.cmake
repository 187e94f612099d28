# Every test runs through ctest so CI reads one summary line.
#  - spec/c/test_*.c: C tests linking liboflua through oflua.h
#  - spec/*_spec.lua: busted specs, run by the built oflua as the Lua interpreter
#  - luacheck over lua/, spec/ and examples/
find_program(BUSTED_SCRIPT busted)
find_program(LUACHECK luacheck)

set(OFLUA_TEST_ENV
  "OFLUA_BIN=$<TARGET_FILE:oflua>"
  "OFLUA_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}"
  "OFLUA_BUILD_DIR=${CMAKE_CURRENT_BINARY_DIR}"
  "OFLUA_PATH="
  "OFAUTH_API_KEY="
  "OFAUTH_WEBHOOK_SECRET="
  "OFAUTH_BASE_URL="
  "OFLUA_STORE="
  "OFLUA_STORE_KEY="
  "OFLUA_STORE_KEY_FILE="
  # specs talk to 127.0.0.1 (and *.invalid for DNS failures): never through a proxy
  "no_proxy=127.0.0.1,localhost,invalid"
  "NO_PROXY=127.0.0.1,localhost,invalid"
  # intercept_tls_get_addr=0: GCC 12's sanitizer runtime misreads glibc >= 2.25
  # dynamic TLS blocks when one happens to sit at a certain page offset, and
  # LeakSanitizer's tracer then dies at exit ("Tracer caught signal 11", seen
  # in spec/secrets_flow_spec; google/sanitizers#1322). Leaks are still found.
  "ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:intercept_tls_get_addr=0"
  "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
  "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/spec/lsan.supp:print_suppressions=0")

file(GLOB OFLUA_C_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/spec/c/test_*.c)
foreach(src ${OFLUA_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_compile_options(${name} PRIVATE ${OFLUA_WARNINGS})
  target_compile_definitions(${name} PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE)
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(${name} PRIVATE oflua_static)
  add_test(NAME c/${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(c/${name} PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 120)
endforeach()

if(BUSTED_SCRIPT)
  file(GLOB OFLUA_SPECS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/spec/*_spec.lua)
  foreach(spec ${OFLUA_SPECS})
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME spec/${name}
      COMMAND $<TARGET_FILE:oflua> ${BUSTED_SCRIPT} --output=utfTerminal ${spec}
      WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
    set_tests_properties(spec/${name} PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 300)
  endforeach()
else()
  message(WARNING "busted not found (apt-get install lua-busted): Lua specs will not run")
endif()

if(LUACHECK)
  add_test(NAME luacheck COMMAND ${LUACHECK} --no-color -q lua spec examples scripts/lib bench
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
else()
  message(WARNING "luacheck not found (apt-get install lua-check): lint will not run")
endif()

# Installing into a fresh prefix gives a binary that finds its Lua tree and
# side objects there, and a pkg-config file a C program can build against.
add_test(NAME install COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/spec/install_test.sh
  ${CMAKE_COMMAND} ${CMAKE_CURRENT_BINARY_DIR} ${OFLUA_SANITIZE}
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
set_tests_properties(install PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 300)

# `luarocks make` of the rockspec into a temporary tree (offline), then plain
# lua5.4 and the tree's binary. Skipped under the sanitizers (plain lua5.4
# cannot load ASan-instrumented modules) and when luarocks is missing.
find_program(LUAROCKS luarocks)
if(LUAROCKS AND NOT OFLUA_SANITIZE)
  add_test(NAME luarocks COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/spec/luarocks_test.sh
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(luarocks PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 600)
endif()

# The Debian package (prefix /usr, cpack -G DEB) built in a temporary
# directory: Depends, contents, the extracted binary. Not under the
# sanitizers (the package would depend on libasan).
find_program(DPKG_DEB dpkg-deb)
if(DPKG_DEB AND NOT OFLUA_SANITIZE)
  add_test(NAME package COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/spec/package_test.sh ${CMAKE_COMMAND}
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(package PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 600)
endif()

# Helper executables for specs and benches (no test_ prefix: not tests themselves).
# http_fixture_server: plain-socket HTTP/1.1 server for spec/http_spec.lua and bench/http.sh.
add_executable(http_fixture_server ${CMAKE_CURRENT_SOURCE_DIR}/spec/c/http_fixture_server.c)
target_compile_options(http_fixture_server PRIVATE ${OFLUA_WARNINGS})
target_compile_definitions(http_fixture_server PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE)
target_link_libraries(http_fixture_server PRIVATE Threads::Threads)
# abuse_client: slow/idle connections and endless bodies from a chosen loopback
# address, for spec/abuse_server_spec.lua.
add_executable(abuse_client ${CMAKE_CURRENT_SOURCE_DIR}/spec/c/abuse_client.c)
target_compile_options(abuse_client PRIVATE ${OFLUA_WARNINGS})
target_compile_definitions(abuse_client PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE)

# The end-to-end demo (scripts/demo without the bootstrap/build part): the
# emulator, the example app under `oflua serve`, Link, webhooks, policies,
# doctor and the secrets scan, on loopback ports.
add_test(NAME demo COMMAND $<TARGET_FILE:oflua> scripts/lib/demo.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
set_tests_properties(demo PROPERTIES ENVIRONMENT "${OFLUA_TEST_ENV}" TIMEOUT 180)

# ---- fuzz targets (spec/fuzz/) ----
# fuzz_replay runs the fuzz harness over given inputs without libFuzzer; it is
# built in every build so spec/abuse_fuzz_replay_spec.lua replays the seed
# corpora and saved findings (under the sanitizers in build-asan/).
# -DOFLUA_FUZZ=ON (clang only; scripts/fuzz uses build-fuzz/) adds one
# libFuzzer executable per target, linked with a coverage-instrumented copy of
# liboflua. Off by default: not part of the test run.
option(OFLUA_FUZZ "Build the libFuzzer targets in spec/fuzz/ (clang)" OFF)
set(OFLUA_FUZZ_TARGETS verify app callback store json)

add_executable(fuzz_replay spec/fuzz/fuzz_lua.c spec/fuzz/replay_main.c)
target_compile_options(fuzz_replay PRIVATE ${OFLUA_WARNINGS})
target_compile_definitions(fuzz_replay PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE
  OFLUA_FUZZ_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
target_link_libraries(fuzz_replay PRIVATE oflua_static)

if(OFLUA_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "OFLUA_FUZZ needs clang (CC=clang; scripts/fuzz does it)")
  endif()
  set(OFLUA_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_library(oflua_fuzzlib STATIC ${OFLUA_LIB_SOURCES})
  oflua_c_target(oflua_fuzzlib)
  target_compile_options(oflua_fuzzlib PRIVATE ${OFLUA_FUZZ_FLAGS} -fsanitize=fuzzer-no-link)
  target_link_libraries(oflua_fuzzlib PUBLIC ${OFLUA_LINK_LIBS})
  target_include_directories(oflua_fuzzlib PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/src)
  foreach(t ${OFLUA_FUZZ_TARGETS})
    add_executable(fuzz_${t} spec/fuzz/fuzz_lua.c)
    target_compile_options(fuzz_${t} PRIVATE ${OFLUA_WARNINGS} ${OFLUA_FUZZ_FLAGS} -fsanitize=fuzzer)
    target_compile_definitions(fuzz_${t} PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE
      OFLUA_FUZZ_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}" OFLUA_FUZZ_TARGET="${t}" OFLUA_FUZZ_LIBFUZZER)
    target_link_options(fuzz_${t} PRIVATE ${OFLUA_FUZZ_FLAGS} -fsanitize=fuzzer)
    target_link_libraries(fuzz_${t} PRIVATE oflua_fuzzlib)
  endforeach()
endif()

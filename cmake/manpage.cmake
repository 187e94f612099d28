# cmake -DBIN=path/to/oflua -DOUT=oflua.1 -P manpage.cmake: `oflua help --man`
# into OUT (the environment's NO_COLOR/OFLUA_PATH must not change it).
execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=OFLUA_PATH NO_COLOR=1 ${BIN} help --man
  OUTPUT_FILE ${OUT}.tmp RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "oflua help --man failed (${rc}): ${err}")
endif()
file(RENAME ${OUT}.tmp ${OUT})

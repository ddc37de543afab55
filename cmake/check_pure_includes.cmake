# Run with `cmake -DROOT=<source dir> -P check_pure_includes.cmake` (every build does, see
# CMakeLists.txt). The pure folders decide; proxy/ does the I/O. A socket, event-loop or thread
# header in a pure folder fails the build, naming the file and line.
set(pure_dirs protocol routing stats session pool admission health config)
set(forbidden "#[ \t]*include[ \t]*[<\"](boost/asio|boost/beast|sys/socket|sys/epoll|netinet/|arpa/|poll\\.h|unistd\\.h|thread>)")
set(found "")
foreach(dir ${pure_dirs})
  file(GLOB files ${ROOT}/${dir}/*.h ${ROOT}/${dir}/*.cpp)
  foreach(f ${files})
    file(STRINGS ${f} lines REGEX "${forbidden}")
    foreach(line ${lines})
      file(RELATIVE_PATH rel ${ROOT} ${f})
      string(APPEND found "\n  ${rel}: ${line}")
    endforeach()
  endforeach()
endforeach()
if(found)
  message(FATAL_ERROR "I/O headers in pure folders (move the I/O to proxy/):${found}")
endif()

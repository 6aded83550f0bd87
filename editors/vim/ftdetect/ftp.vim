" ftdsl pipeline files
autocmd BufRead,BufNewFile *.ftp setfiletype ftp

#define _GNU_SOURCE
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc,char**argv){
  int s=socket(AF_INET,SOCK_DGRAM,0); struct sockaddr_in a={0}; a.sin_family=AF_INET;
  a.sin_port=htons(atoi(argv[2])); inet_pton(AF_INET,argv[1],&a.sin_addr);
  connect(s,(void*)&a,sizeof a); double secs=atof(argv[3]); int len=argc>4?atoi(argv[4]):32;
  char buf[2000]={0}; struct mmsghdr m[64]; struct iovec iov[64];
  for(int i=0;i<64;i++){iov[i].iov_base=buf;iov[i].iov_len=len;memset(&m[i],0,sizeof m[i]);m[i].msg_hdr.msg_iov=&iov[i];m[i].msg_hdr.msg_iovlen=1;}
  struct timespec t0,t; clock_gettime(CLOCK_MONOTONIC,&t0); long n=0;
  for(;;){ int r=sendmmsg(s,m,64,0); if(r>0)n+=r; clock_gettime(CLOCK_MONOTONIC,&t);
    if((t.tv_sec-t0.tv_sec)+(t.tv_nsec-t0.tv_nsec)/1e9>secs)break;}
  printf("%ld\n",n); return 0;}
